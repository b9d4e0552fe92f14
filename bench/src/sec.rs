//! Runtime security overhead: syscall-heavy loops (openat+close, UDP
//! connect, fork+exec of /bin/true) timed with nothing attached, with moat
//! watching 20 paths/binaries that never match, with moat emitting every
//! event (read and serialized to JSON by a reader thread, as `moat watch
//! --json` does), and with auditd recording the same events with the
//! equivalent audit rules. Configurations are interleaved round by round
//! (medians reported), so a slow moment of the VM hits all alike.

use std::{
    ffi::CString,
    io::Write,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use moat_core::sec::Event;
use moat_host::{
    loader::LogOpts,
    sec::{WatchOpts, Watcher},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    Openat,
    Connect,
    ForkExec,
}

impl Work {
    pub fn name(self) -> &'static str {
        match self {
            Work::Openat => "openat+close",
            Work::Connect => "UDP connect (socket+connect+close)",
            Work::ForkExec => "fork+exec /bin/true",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    Nothing,
    MoatNoMatch,
    MoatEvery,
    AuditdEvery,
}

impl Setup {
    pub fn name(self) -> &'static str {
        match self {
            Setup::Nothing => "nothing attached",
            Setup::MoatNoMatch => "moat watch, 20 rules that do not match",
            Setup::MoatEvery => "moat watch, every event emitted and read",
            Setup::AuditdEvery => "auditd, every event recorded",
        }
    }
}

#[derive(Clone, Debug)]
pub struct SecResult {
    pub work: Work,
    pub setup: Setup,
    /// Median ns per operation over the rounds.
    pub ns: f64,
    /// Median over the rounds of ns / the same round's "nothing attached".
    pub ratio: f64,
    pub spread: (f64, f64),
    /// Events moat read (MoatEvery) in the last round, and lost.
    pub events: u64,
    pub lost: u64,
}

fn ops_for(w: Work) -> usize {
    match w {
        Work::Openat => 200_000,
        Work::Connect => 100_000,
        Work::ForkExec => 2_000,
    }
}

impl Work {
    pub fn parse(s: &str) -> Option<Work> {
        match s {
            "openat" => Some(Work::Openat),
            "connect" => Some(Work::Connect),
            "fork-exec" => Some(Work::ForkExec),
            _ => None,
        }
    }
    fn arg(self) -> &'static str {
        match self {
            Work::Openat => "openat",
            Work::Connect => "connect",
            Work::ForkExec => "fork-exec",
        }
    }
}

/// Runs the loop in a fresh process (`moat-bench sec-work`): the kernel
/// audits only processes started after audit was enabled, so every setup
/// measures a process started after its setup.
fn run_child(w: Work, n: usize, port: u16) -> Result<f64> {
    let exe = std::env::current_exe()?;
    let o = Command::new(exe)
        .args(["sec-work", w.arg(), &n.to_string(), &port.to_string()])
        .output()
        .context("running moat-bench sec-work")?;
    if !o.status.success() {
        bail!("sec-work: {}", String::from_utf8_lossy(&o.stderr));
    }
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .context("sec-work output")
}

/// Runs `n` operations of `w`; ns per operation.
pub fn run_work(w: Work, n: usize, port: u16) -> f64 {
    let path = CString::new("/etc/hostname").unwrap();
    let t0 = Instant::now();
    match w {
        Work::Openat => {
            for _ in 0..n {
                // SAFETY: plain syscalls on a valid path.
                unsafe {
                    let fd = libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY);
                    if fd >= 0 {
                        libc::close(fd);
                    }
                }
            }
        }
        Work::Connect => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
                },
                sin_zero: [0; 8],
            };
            for _ in 0..n {
                // SAFETY: plain syscalls with a valid sockaddr.
                unsafe {
                    let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                    libc::connect(
                        s,
                        (&sa as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as u32,
                    );
                    libc::close(s);
                }
            }
        }
        Work::ForkExec => {
            for _ in 0..n {
                let _ = Command::new("/bin/true").status();
            }
        }
    }
    t0.elapsed().as_nanos() as f64 / n as f64
}

/// A reader thread that decodes every event and writes it as JSON to a sink.
struct Reader {
    stop: Arc<AtomicBool>,
    events: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<Result<Watcher>>>,
}

impl Reader {
    fn start(o: WatchOpts) -> Result<Reader> {
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(AtomicU64::new(0));
        let (s2, e2) = (stop.clone(), events.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || -> Result<Watcher> {
            let mut w = match Watcher::start(&o, &LogOpts::default()) {
                Ok(w) => {
                    let _ = tx.send(Ok(()));
                    w
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("{e:#}")));
                    return Err(e);
                }
            };
            let mut sink = std::io::sink();
            while !s2.load(Ordering::Relaxed) {
                for raw in w.poll(Duration::from_millis(50)) {
                    let e = Event::decode(&raw);
                    let _ = writeln!(sink, "{}", serde_json::to_string(&e).unwrap_or_default());
                    e2.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(w)
        });
        match rx.recv() {
            Ok(Ok(())) => Ok(Reader {
                stop,
                events,
                handle: Some(handle),
            }),
            Ok(Err(e)) => bail!("moat watch for the benchmark: {e}"),
            Err(_) => bail!("moat watch for the benchmark did not start"),
        }
    }
    /// Stops; (events read, events lost over all hooks).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let w = self
            .handle
            .take()
            .and_then(|h| h.join().ok())
            .and_then(|r| r.ok());
        let lost = w
            .and_then(|w| w.stats().ok())
            .map(|s| s.iter().map(|x| x.lost).sum())
            .unwrap_or(0);
        (self.events.load(Ordering::Relaxed), lost)
    }
}

/// Where the openat benchmark's twenty watched directories live.
fn watch_root() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("moat-bench-watch-{}", std::process::id()))
}

fn watch_opts(w: Work, every: bool) -> WatchOpts {
    let mut o = WatchOpts {
        ring_bytes: Some(1 << 24),
        ..Default::default()
    };
    match (w, every) {
        (Work::Openat, false) => {
            // Twenty directories the loop never opens in (they exist, so
            // moat marks them with fanotify: see watch_dirs).
            o.files = (0..20)
                .map(|i| format!("{}/{i}/", watch_root().display()))
                .collect();
        }
        (Work::Openat, true) => o.files = vec!["/".into()],
        (Work::Connect, _) => {
            o.connect = true;
            if !every {
                // 20 cgroups-worth of nothing: a cgroup the loop is not in.
                o.cgroup = Some("/sys/fs/cgroup/unified/moat-bench-empty".into());
            }
        }
        (Work::ForkExec, false) => {
            o.exec = true;
            o.binaries = (0..20)
                .map(|i| format!("/nonexistent/moat-bench-{i}").into())
                .collect();
        }
        (Work::ForkExec, true) => {
            o.exec = true;
            o.exit = true;
        }
    }
    o
}

/// auditd in the foreground with rules recording every event of `w`.
struct Auditd {
    child: Child,
}

fn auditctl(args: &[&str]) -> Result<()> {
    let o = Command::new("auditctl")
        .args(args)
        .output()
        .context("running auditctl (apt-get install auditd)")?;
    if !o.status.success() {
        bail!(
            "auditctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

impl Auditd {
    fn start(w: Work) -> Result<Auditd> {
        let child = Command::new("auditd")
            .arg("-n")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting auditd (apt-get install auditd)")?;
        std::thread::sleep(Duration::from_millis(500));
        auditctl(&["-D"])?;
        auditctl(&["-e", "1"])?;
        auditctl(&["-b", "65536"])?;
        let sc = match w {
            Work::Openat => "openat",
            Work::Connect => "connect",
            Work::ForkExec => "execve",
        };
        auditctl(&[
            "-a",
            "always,exit",
            "-F",
            "arch=b64",
            "-S",
            sc,
            "-k",
            "moat-bench",
        ])?;
        Ok(Auditd { child })
    }
}

impl Auditd {
    /// Records the kernel lost (`auditctl -s`).
    fn lost(&self) -> u64 {
        let o = Command::new("auditctl").arg("-s").output();
        o.ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .find_map(|l| l.strip_prefix("lost ").map(|v| v.trim().parse().ok()))
                    .flatten()
            })
            .unwrap_or(0)
    }
}

impl Drop for Auditd {
    fn drop(&mut self) {
        let _ = auditctl(&["-D"]);
        let _ = auditctl(&["-e", "0"]);
        // SAFETY: the auditd this benchmark started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Every work under every setup, `rounds` interleaved rounds.
pub fn overhead(rounds: usize, mut say: impl FnMut(&str)) -> Result<Vec<SecResult>> {
    let _ = std::fs::create_dir_all("/sys/fs/cgroup/unified/moat-bench-empty");
    for i in 0..20 {
        std::fs::create_dir_all(watch_root().join(i.to_string()))?;
    }
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(watch_root());
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let port = udp.local_addr()?.port();
    let setups = [
        Setup::Nothing,
        Setup::MoatNoMatch,
        Setup::MoatEvery,
        Setup::AuditdEvery,
    ];
    let mut out = Vec::new();
    for w in [Work::Openat, Work::Connect, Work::ForkExec] {
        let n = ops_for(w);
        let mut samples: Vec<Vec<f64>> = vec![vec![]; setups.len()];
        let mut last = vec![(0u64, 0u64); setups.len()];
        for r in 0..rounds {
            for (si, s) in setups.iter().enumerate() {
                let ns = match s {
                    Setup::Nothing => run_child(w, n, port)?,
                    Setup::MoatNoMatch | Setup::MoatEvery => {
                        let rd = Reader::start(watch_opts(w, *s == Setup::MoatEvery))?;
                        let ns = run_child(w, n, port)?;
                        std::thread::sleep(Duration::from_millis(300));
                        last[si] = rd.finish();
                        ns
                    }
                    Setup::AuditdEvery => {
                        let a = Auditd::start(w)?;
                        let before = a.lost();
                        let ns = run_child(w, n, port)?;
                        last[si] = (0, a.lost().saturating_sub(before));
                        ns
                    }
                };
                say(&format!(
                    "  {} / {} round {}: {:.0} ns/op",
                    w.name(),
                    s.name(),
                    r + 1,
                    ns
                ));
                samples[si].push(ns);
            }
        }
        let base = samples[0].clone();
        for (si, s) in setups.iter().enumerate() {
            // Overhead: the median of per-round ratios to the round's own
            // "nothing attached" (a slow moment of the VM hits both alike).
            let mut ratios: Vec<f64> = samples[si].iter().zip(&base).map(|(x, b)| x / b).collect();
            let ratio = median(&mut ratios);
            let v = &mut samples[si];
            let lo = v.iter().cloned().fold(f64::MAX, f64::min);
            let hi = v.iter().cloned().fold(0.0, f64::max);
            out.push(SecResult {
                work: w,
                setup: *s,
                ns: median(v),
                ratio,
                spread: (lo, hi),
                events: last[si].0,
                lost: last[si].1,
            });
        }
    }
    let _ = std::fs::remove_dir("/sys/fs/cgroup/unified/moat-bench-empty");
    Ok(out)
}

pub fn markdown(res: &[SecResult], rounds: usize) -> String {
    let mut s = String::from("## Runtime security overhead\n\n");
    s.push_str(&format!(
        "Syscall-heavy loops, each in a fresh process pinned to CPU 0 (moat's reader and \
         auditd run on the other CPU), median of {rounds} interleaved rounds (min-max). \
         Overhead: the median over the rounds of the time against the same round's \
         \"nothing attached\". moat's rules are filters in the kernel \
         (`moat watch --file` prefixes, `--cgroup`, `--binary`): the twenty non-matching \
         `--file` prefixes are existing directories the loop never opens in, served by \
         fanotify marks (an open elsewhere costs nothing); `--file /` (every open) is served \
         by the tp_btf/sys_enter program; \"every event\" means each \
         operation is written to the ring buffer and read and serialized to JSON by a \
         reader thread, as `moat watch --json` does. auditd records the same syscalls \
         (`auditctl -a always,exit -S <syscall>`) to /var/log/audit.\n\n"
    ));
    s.push_str("| work | setup | ns/op | overhead | events read or recorded (lost) |\n|---|---|---:|---:|---|\n");
    for w in [Work::Openat, Work::Connect, Work::ForkExec] {
        for r in res.iter().filter(|r| r.work == w) {
            s.push_str(&format!(
                "| {} | {} | {:.0} ({:.0}-{:.0}) | {} | {} |\n",
                w.name(),
                r.setup.name(),
                r.ns,
                r.spread.0,
                r.spread.1,
                if r.setup == Setup::Nothing {
                    "-".to_string()
                } else {
                    format!("{:+.1}%", (r.ratio - 1.0) * 100.0)
                },
                match r.setup {
                    Setup::Nothing => "-".into(),
                    // auditd rotates its logs under this load: its records
                    // are not counted, only what the kernel lost.
                    Setup::AuditdEvery => format!("kernel lost {}", r.lost),
                    _ => format!("{} ({})", r.events, r.lost),
                }
            ));
        }
    }
    s
}

/// The bars: at most 5% overhead with non-matching rules on the
/// openat loop; moat emitting every open costs less than auditd recording
/// every open.
pub fn bars(res: &[SecResult]) -> Vec<crate::report::Bar> {
    let get = |w: Work, s: Setup| {
        res.iter()
            .find(|r| r.work == w && r.setup == s)
            .map(|r| r.ratio)
    };
    let nm = get(Work::Openat, Setup::MoatNoMatch);
    let every = get(Work::Openat, Setup::MoatEvery);
    let audit = get(Work::Openat, Setup::AuditdEvery);
    let over = |x: Option<f64>| x.map(|x| (x - 1.0) * 100.0);
    vec![
        crate::report::Bar {
            what: "runtime security: openat loop overhead with 20 non-matching rules at most 5%"
                .into(),
            measured: over(nm).map_or("not measured".into(), |o| format!("{o:+.1}%")),
            met: over(nm).map(|o| o <= 5.0),
        },
        crate::report::Bar {
            what: "runtime security: moat emitting every open costs less than auditd recording every open".into(),
            measured: match (over(every), over(audit)) {
                (Some(m), Some(a)) => format!("moat {m:+.1}%, auditd {a:+.1}%"),
                _ => "not measured".into(),
            },
            met: every.zip(audit).map(|(m, a)| m < a),
        },
    ]
}

/// The exec storm per ring buffer size: processes started as fast as two
/// threads can (fork+exec of a copy of /bin/true), every exec and exit
/// watched; events read and lost.
#[derive(Clone, Debug)]
pub struct ExecRate {
    pub ring: u32,
    pub procs: u64,
    pub per_sec: f64,
    pub events: u64,
    pub lost: u64,
}

pub fn exec_rate(rings: &[u32], procs: usize, mut say: impl FnMut(&str)) -> Result<Vec<ExecRate>> {
    let bin = std::env::temp_dir().join(format!("moat-bench-true-{}", std::process::id()));
    std::fs::copy("/bin/true", &bin)?;
    let mut out = Vec::new();
    let r = (|| -> Result<()> {
        for &ring in rings {
            let rd = Reader::start(WatchOpts {
                exec: true,
                exit: true,
                binaries: vec![bin.clone()],
                ring_bytes: Some(ring),
                ..Default::default()
            })?;
            let t0 = Instant::now();
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let b = bin.clone();
                    std::thread::spawn(move || {
                        for _ in 0..procs / 2 {
                            let _ = Command::new(&b).status();
                        }
                    })
                })
                .collect();
            for t in threads {
                let _ = t.join();
            }
            let secs = t0.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_millis(300));
            let (events, lost) = rd.finish();
            let n = (procs / 2 * 2) as u64;
            say(&format!(
                "  exec storm, ring {ring} B: {n} processes in {secs:.2}s, {events} events, {lost} lost"
            ));
            out.push(ExecRate {
                ring,
                procs: n,
                per_sec: n as f64 / secs,
                events,
                lost,
            });
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&bin);
    r.map(|_| out)
}

pub fn exec_rate_markdown(r: &[ExecRate]) -> String {
    let mut s = String::from(
        "### Exec storms per ring buffer size\n\nProcesses started as fast as two threads can \
         (fork+exec of a copy of /bin/true, which only the watch's binary filter passes), each \
         giving an exec and an exit event; `matched = events + lost` holds in every row.\n\n\
         | ring buffer | processes | per second | events | lost |\n|---:|---:|---:|---:|---:|\n",
    );
    for x in r {
        s.push_str(&format!(
            "| {} KiB | {} | {:.0} | {} | {} |\n",
            x.ring / 1024,
            x.procs,
            x.per_sec,
            x.events,
            x.lost
        ));
    }
    s
}
