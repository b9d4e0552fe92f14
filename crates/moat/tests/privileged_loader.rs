//! The loader against the real verifier: a deliberately broken program must
//! be reported readably (program name, reason in words, source line), the
//! full log must reach --verifier-log, and the good counter must load JITed.

mod common;

use moat_host::loader::{self, LogOpts, VerifierError};
use std::time::Duration;

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

/// A thread that signals the calling thread `n` times, `every` apart
/// (SIGUSR1, whose handler does nothing).
fn signal_thread(n: u32, every: Duration) -> std::thread::JoinHandle<()> {
    extern "C" fn noop(_: libc::c_int) {}
    // SAFETY: a handler that does nothing, installed for SIGUSR1 only.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = noop as *const () as usize;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let pid = std::process::id() as i32;
    std::thread::spawn(move || {
        for _ in 0..n {
            std::thread::sleep(every);
            // SAFETY: signals a thread of this process, which handles SIGUSR1.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGUSR1) };
        }
    })
}

/// Loads the firewall's TC program while the loading thread is signalled
/// `n` times, `every` apart.
fn load_tc_under_signals(n: u32, every: Duration) -> anyhow::Result<loader::Loaded> {
    moat_host::sys::ensure_bpffs().unwrap();
    let pins = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/moat-sigtest-{}-{n}",
        std::process::id()
    ));
    std::fs::create_dir_all(&pins).unwrap();
    let log = LogOpts::default();
    let mut bpf = loader::open_with(moat_ebpf::FW, &log, |l| {
        l.default_map_pin_directory(&pins);
    })
    .unwrap();
    let kicker = signal_thread(n, every);
    let r = loader::load_program(&mut bpf, moat_abi::fw::PROG_TC, &log);
    kicker.join().unwrap();
    drop(bpf);
    let _ = std::fs::remove_dir_all(&pins);
    r
}

/// A signal that arrives while the verifier runs makes BPF_PROG_LOAD fail
/// with EAGAIN (the kernel checks signal_pending() in its main loop). The
/// loader tries again instead of reporting a refusal: three signals, 40 ms
/// apart, interrupt three verifications in a row (aya's own retries, which
/// grow the log buffer, cover fewer), and the program still loads. A storm
/// that outlasts every retry is reported as an interruption, not as a
/// verdict on the program.
#[test]
fn load_survives_signals_during_verification() {
    if !common::privileged("load_survives_signals_during_verification") {
        return;
    }
    let loaded =
        load_tc_under_signals(3, Duration::from_millis(40)).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.id > 0);

    let err = match load_tc_under_signals(2000, Duration::from_millis(2)) {
        Ok(_) => panic!("a signal every 2 ms for 4 s let the verifier finish"),
        Err(e) => e,
    };
    let v: &VerifierError = err.downcast_ref().expect("a VerifierError");
    assert_eq!(v.errno, libc::EAGAIN, "{v}");
    assert_eq!(v.attempts, loader::INTERRUPTED_RETRIES + 1, "{v}");
    let text = v.to_string();
    assert!(text.contains("EAGAIN: interrupted"), "{text}");
    assert!(text.contains("the program was not judged"), "{text}");
    assert!(
        !text.contains("reason:") && !text.contains("at source line"),
        "{text}"
    );
}

/// BPF_PROG_TEST_RUN with a repeat count stops with EINTR when a signal is
/// pending between repetitions; the benchmarks' timed runs and generators
/// go through `test_run_retrying`, which runs them again.
#[test]
fn timed_test_run_survives_signals() {
    if !common::privileged("timed_test_run_survives_signals") {
        return;
    }
    use aya::programs::{ProgramError, TestRun, TestRunOptions};
    let log = LogOpts::default();
    let mut bpf = loader::open(moat_ebpf::testdata::DROP, &log).unwrap();
    let (prog, _) = loader::load_xdp(&mut bpf, "drop_xdp", &log).unwrap();
    let frame = moat_core::packet::udp4_frame(
        "10.0.0.1".parse().unwrap(),
        "10.0.0.2".parse().unwrap(),
        1,
        2,
        b"x",
    );
    let run = || {
        prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            repeat: 50_000_000,
            ..Default::default()
        })
    };
    let signals = || signal_thread(3, Duration::from_millis(40));
    // Without the retry the first signal ends the run.
    let k = signals();
    let plain = run();
    k.join().unwrap();
    match plain {
        Err(ProgramError::SyscallError(e)) => {
            assert_eq!(e.io_error.raw_os_error(), Some(libc::EINTR), "{e}")
        }
        other => panic!("50M repetitions under signals: {other:?}"),
    }
    let k = signals();
    let r = loader::test_run_retrying(run);
    k.join().unwrap();
    assert_eq!(r.expect("retried run").return_value, 1, "XDP_DROP");
}
