//! The loader against the real verifier: a deliberately broken program must
//! be reported readably (program name, reason in words, source line), the
//! full log must reach --verifier-log, and the good counter must load JITed.

mod common;

use moat_host::loader::{self, LogOpts, VerifierError};

#[test]
fn verifier_rejection_is_readable() {
    if !common::privileged("verifier_rejection_is_readable") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("moat-vlog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("verifier.log");
    let log = LogOpts {
        verbose: 0,
        verifier_log: Some(file.clone()),
    };
    let mut bpf = loader::open(moat_ebpf::testdata::BROKEN, &log).expect("open broken object");
    let err = match loader::load_xdp(&mut bpf, "broken_xdp", &log) {
        Ok(_) => panic!("the verifier accepted a program that reads past data_end"),
        Err(e) => e,
    };
    let v: &VerifierError = err.downcast_ref().expect("a VerifierError");
    let text = v.to_string();
    eprintln!("{text}");
    assert_eq!(v.program, "broken_xdp");
    assert_eq!(v.errno, libc::EACCES, "packet bounds violations are EACCES");
    assert!(text.contains("rejected BPF program `broken_xdp`"), "{text}");
    assert!(
        text.contains("EACCES: the verifier found the program unsafe"),
        "{text}"
    );
    // The source line, from BTF line info, with file and line number.
    assert!(text.contains("data[14]"), "source text missing:\n{text}");
    assert!(
        text.contains("broken.bpf.c:14"),
        "file:line missing:\n{text}"
    );
    // The verifier's own reason.
    assert!(
        text.contains("invalid access to packet"),
        "reason missing:\n{text}"
    );
    assert!(
        v.reason()
            .is_some_and(|r| r.starts_with("invalid access to packet")),
        "reason line: {:?}",
        v.reason()
    );
    // Sized to the reader: default shows at most 12 lines of log.
    let shown = text.lines().filter(|l| l.starts_with("    ")).count();
    assert!(shown <= 12, "default output too long ({shown} log lines)");
    // --verifier-log gets all of it.
    let full = std::fs::read_to_string(&file).expect("verifier log file written");
    assert_eq!(full, v.log);
    assert!(full.lines().count() >= shown);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn counter_loads_and_reports_jit() {
    if !common::privileged("counter_loads_and_reports_jit") {
        return;
    }
    let log = LogOpts::default();
    let mut bpf = loader::open(moat_ebpf::COUNT, &log).unwrap();
    let (_, loaded) = loader::load_xdp(&mut bpf, moat_abi::count::PROG_XDP, &log)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.id > 0);
    assert!(loaded.insns > 10, "translated size must be reported");
    let jit_on = std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable")
        .unwrap()
        .trim()
        != "0";
    assert_eq!(
        loaded.jited_bytes > 0,
        jit_on,
        "JIT state must match the sysctl"
    );
    let line = loaded.to_string();
    assert!(
        line.contains(if jit_on { "JIT on" } else { "JIT off" }),
        "{line}"
    );
}
