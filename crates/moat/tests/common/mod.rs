//! Helpers of the privileged tests (`tests/privileged_*.rs`).
//!
//! Tier rule: a privileged test calls [`privileged`] first. As root it runs.
//! Without root it prints why it skips, unless MOAT_REQUIRE_PRIVILEGED=1
//! (set by CI), where not being able to run is a failure.
#![allow(dead_code)]

use moat_host::{netlab::Lab, sys::NetnsGuard};
use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, SocketAddr},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// True if the test may run; false (after saying why) if it must skip.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("MOAT_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test}: needs root, and MOAT_REQUIRE_PRIVILEGED=1 forbids skipping");
    }
    eprintln!("SKIP {test}: needs root (CAP_BPF, CAP_NET_ADMIN); run the suite as root");
    false
}

/// A lab tag unique to this process and call (<= 12 chars).
pub fn tag(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

pub fn moat_bin() -> &'static str {
    env!("CARGO_BIN_EXE_moat")
}

/// A running `moat` process whose stderr is collected line by line.
pub struct MoatProc {
    pub child: Child,
    stderr_lines: std::sync::mpsc::Receiver<String>,
    pub stderr: Vec<String>,
}

impl MoatProc {
    pub fn spawn(args: &[&str]) -> MoatProc {
        Self::spawn_env(args, &[])
    }

    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> MoatProc {
        let mut child = Command::new(moat_bin())
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning moat");
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        MoatProc {
            child,
            stderr_lines: rx,
            stderr: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle` (panics after `timeout`).
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(l) => {
                    self.stderr.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "moat did not print {needle:?} within {timeout:?}; stderr so far:\n{}",
                        self.stderr.join("\n")
                    );
                }
            }
        }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for exit; returns (success, stdout, all stderr).
    pub fn finish(mut self) -> (bool, String, String) {
        let out = self.child.wait_with_output().expect("waiting for moat");
        while let Ok(l) = self.stderr_lines.recv_timeout(Duration::from_millis(200)) {
            self.stderr.push(l);
        }
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            self.stderr.join("\n"),
        )
    }
}

/// Program id from moat's "prog id N" stderr line.
pub fn prog_id(line: &str) -> u32 {
    let rest = line.split("prog id ").nth(1).expect("no prog id in line");
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Is a BPF program with this id still loaded?
pub fn prog_loaded(id: u32) -> bool {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .any(|p| p.id() == id)
}

/// Names of entries under /sys/fs/bpf/moat (empty if absent).
pub fn moat_pins() -> Vec<String> {
    std::fs::read_dir("/sys/fs/bpf/moat")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A private firewall root (pins and state) for one test; on drop the
/// firewall is detached and every pin and file removed, also on failure.
pub struct FwRoot {
    pub pin_root: String,
    pub state_root: String,
    /// The tag's policy directory (see [`policy_file`]), removed on drop.
    pub policy_dir: std::path::PathBuf,
}

impl FwRoot {
    pub fn new(tag: &str) -> FwRoot {
        FwRoot {
            pin_root: format!("/sys/fs/bpf/moat-test-{tag}"),
            state_root: format!("/run/moat-test-{tag}"),
            policy_dir: policy_dir(tag),
        }
    }

    pub fn env(&self) -> [(&str, &str); 2] {
        [
            ("MOAT_PIN_ROOT", self.pin_root.as_str()),
            ("MOAT_STATE_ROOT", self.state_root.as_str()),
        ]
    }

    /// Runs moat with this root; returns (success, stdout, stderr).
    pub fn moat(&self, args: &[&str]) -> (bool, String, String) {
        MoatProc::spawn_env(args, &self.env()).finish()
    }

    /// Runs moat and panics with its output unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.moat(args);
        assert!(ok, "moat {args:?} failed:\n{out}\n{err}");
        out
    }

    /// `moat fw apply -q -f POLICY -i if_b --netns ns_b` on `lab`; panics unless it succeeds.
    pub fn apply(&self, lab: &Lab, policy: &std::path::Path) -> String {
        self.ok(&apply_args(policy, lab, &[]))
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["fw", "status", "--json"])).expect("status JSON")
    }

    pub fn reason(&self, name: &str) -> u64 {
        self.status()["reasons"][name]["packets"].as_u64().unwrap()
    }
}

impl Drop for FwRoot {
    fn drop(&mut self) {
        let _ = self.moat(&["fw", "detach"]);
        let _ = std::fs::remove_dir_all(&self.pin_root);
        let _ = std::fs::remove_dir_all(&self.state_root);
        let _ = std::fs::remove_dir_all(&self.policy_dir);
    }
}

/// The arguments of `moat fw apply -q -f POLICY -i if_b [EXTRA] --netns ns_b`.
pub fn apply_args<'a>(
    policy: &'a std::path::Path,
    lab: &'a Lab,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut v = vec![
        "fw",
        "apply",
        "-q",
        "-f",
        policy.to_str().unwrap(),
        "-i",
        &lab.if_b,
    ];
    v.extend_from_slice(extra);
    v.extend_from_slice(&["--netns", &lab.ns_b]);
    v
}

/// Where [`policy_file`] writes the policies of a tag.
pub fn policy_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("moat-pol-{tag}"))
}

/// Writes a policy file into the tag's temp dir and returns its path (the
/// [`FwRoot`] of the same tag removes the dir).
pub fn policy_file(tag: &str, yaml: &str) -> std::path::PathBuf {
    let dir = policy_dir(tag);
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("policy.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

/// Runs `f` on a thread inside namespace `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let _g = NetnsGuard::enter(&ns).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// One ICMP echo; true if the reply came back.
pub fn ping_ok(ns: &str, dst: IpAddr) -> bool {
    use socket2::{Domain, Protocol, Socket, Type};
    in_ns(ns, move || {
        let (sock, req, reply_type) = match dst {
            IpAddr::V4(_) => (
                Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).unwrap(),
                moat_core::packet::icmpv4(8, 0, [0x12, 0x34, 0, 1], &[0; 16]),
                0u8,
            ),
            IpAddr::V6(d) => (
                Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).unwrap(),
                moat_core::packet::icmpv6(
                    std::net::Ipv6Addr::UNSPECIFIED,
                    d,
                    128,
                    0,
                    [0x12, 0x34, 0, 1],
                    &[0; 16],
                ),
                129u8,
            ),
        };
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        sock.send_to(&req, &SocketAddr::new(dst, 0).into()).unwrap();
        let deadline = Instant::now() + Duration::from_millis(900);
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
        while Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                // SAFETY: recv initialised the first n bytes.
                let b: Vec<u8> = buf[..n]
                    .iter()
                    .map(|x| unsafe { x.assume_init() })
                    .collect();
                // IPv4 raw sockets include the IP header; IPv6 ones do not.
                let icmp = if dst.is_ipv4() {
                    &b[(b[0] as usize & 0xF) * 4..]
                } else {
                    &b[..]
                };
                if icmp.first() == Some(&reply_type) && icmp.get(4..6) == Some(&[0x12, 0x34]) {
                    return true;
                }
            }
        }
        false
    })
}

/// Writes policy `name` into the tag's temp dir (removed with the tag's [`FwRoot`]).
pub fn policy_file_as(tag: &str, name: &str, yaml: &str) -> std::path::PathBuf {
    let dir = policy_dir(tag);
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, yaml).unwrap();
    p
}

/// Removes the tag's policy directory on drop (for tests without a [`FwRoot`]).
pub struct PolicyDir(pub String);

impl Drop for PolicyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(policy_dir(&self.0));
    }
}

/// Pins and state of one test's load balancer (kept apart from the host's
/// and other tests'), removed on drop (`moat lb detach` first).
pub struct LbRoot {
    pub pin_root: String,
    pub state_root: String,
    pub dir: std::path::PathBuf,
}

impl LbRoot {
    pub fn new(tag: &str) -> LbRoot {
        let dir = std::env::temp_dir().join(format!("moat-lb-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        LbRoot {
            pin_root: format!("/sys/fs/bpf/moat-test-{tag}"),
            state_root: format!("/run/moat-test-{tag}"),
            dir,
        }
    }
    pub fn env(&self) -> [(&str, &str); 2] {
        [
            ("MOAT_PIN_ROOT", self.pin_root.as_str()),
            ("MOAT_STATE_ROOT", self.state_root.as_str()),
        ]
    }
    pub fn moat(&self, args: &[&str]) -> (bool, String, String) {
        MoatProc::spawn_env(args, &self.env()).finish()
    }
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.moat(args);
        assert!(ok, "moat {args:?} failed:\n{out}\n{err}");
        out
    }
    /// Writes `yaml` as NAME in the test's directory.
    pub fn file(&self, name: &str, yaml: &str) -> std::path::PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, yaml).unwrap();
        p
    }
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["lb", "status", "--json"])).expect("status JSON")
    }
}

/// The same private root serves a test's guard.
pub type GuardRoot = LbRoot;

impl Drop for LbRoot {
    fn drop(&mut self) {
        let _ = self.moat(&["guard", "detach"]);
        let _ = self.moat(&["lb", "detach"]);
        let _ = self.moat(&["fw", "detach"]);
        let _ = std::fs::remove_dir_all(&self.pin_root);
        let _ = std::fs::remove_dir_all(&self.state_root);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub const CGROOT: &str = "/sys/fs/cgroup/unified";

/// A cgroup v2 directory for the test's processes, removed on drop.
pub struct Cgroup(pub std::path::PathBuf);

impl Cgroup {
    pub fn new(tag: &str) -> Cgroup {
        let p = std::path::Path::new(CGROOT).join(format!("moat-test-{tag}"));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        Cgroup(p)
    }
    /// `cmd` with its child placed in this cgroup before it execs.
    pub fn command(&self, prog: &str, args: &[&str]) -> std::process::Command {
        let procs = std::ffi::CString::new(self.0.join("cgroup.procs").to_str().unwrap()).unwrap();
        use std::os::unix::process::CommandExt;
        let mut c = std::process::Command::new(prog);
        c.args(args);
        // SAFETY: between fork and exec only open/write/close on a path
        // prepared before the fork (async-signal-safe, no allocation).
        unsafe {
            c.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        c
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Anything still inside is ours: end it, then remove the directory.
        if let Ok(s) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for pid in s.lines().filter_map(|l| l.parse::<i32>().ok()) {
                // SAFETY: kill on processes this test started in its cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
