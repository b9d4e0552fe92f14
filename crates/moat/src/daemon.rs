//! `moat daemon`: the agent. It applies what the config directory holds
//! (policy.yaml for the firewall, lb.yaml for the load balancer) with the
//! same validation and atomic swap as the CLI, re-applies a file when it
//! changes (inotify, plus a periodic look in case an event was missed), runs
//! the load balancer's health checks, serves the metrics of every family on
//! one endpoint and writes what it is doing to /run/moat/daemon/state.json
//! (read by `moat status`).
//!
//! The data plane never depends on it: everything it changes is pinned, so
//! killing it (even with SIGKILL) leaves the last state running, health state
//! included (backend up/down lives in the kernel). Started again, it adopts
//! what runs when the source record says the running generation came from
//! the same bytes (no re-attach, no conntrack flush, no backend moves) and
//! applies only files that changed.
//!
//! Files are refused unless owned by root (or by the daemon's user) and not
//! writable by group or others, as is their directory: whoever can write
//! them can change the firewall.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::Write,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, anyhow, bail};
use moat_core::lb::{BackendId, Health, LbConfig, State, encode};
use moat_host::{
    count::Mode,
    fw::{self, state::Paths},
    lb::{self, health},
    loader::LogOpts,
    source, sys,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The unit file shipped in packaging/ (ExecStart's program is replaced by
/// `--install-unit` with the binary that runs).
pub const UNIT: &str = include_str!("../../../packaging/moat.service");
pub const DEFAULT_CONFIG_DIR: &str = "/etc/moat";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Clone, Debug)]
pub struct DaemonOpts {
    pub config_dir: PathBuf,
    /// The interfaces of both files are in this network namespace (and the
    /// health checks run from it).
    pub netns: Option<String>,
    pub log_format: LogFormat,
    /// Where to serve /metrics; None: not served.
    pub metrics: Option<String>,
    /// How often a file whose apply failed (not a bad file: e.g. an
    /// interface that does not exist yet) is tried again.
    pub retry: Duration,
    /// Stop after this long (tests); None: until SIGINT/SIGTERM.
    pub duration: Option<Duration>,
}

// ---------------------------------------------------------------- logging

#[derive(Clone)]
pub struct Logger {
    format: LogFormat,
    out: Arc<Mutex<()>>,
}

impl Logger {
    fn new(format: LogFormat) -> Logger {
        Logger {
            format,
            out: Arc::new(Mutex::new(())),
        }
    }

    /// One line per event on stdout, flushed (journald or a pipe sees it at once).
    pub fn event(&self, level: &str, event: &str, fields: Value) {
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let line = match self.format {
            LogFormat::Json => {
                let mut m = serde_json::Map::new();
                m.insert("ts".into(), ts.into());
                m.insert("level".into(), level.into());
                m.insert("event".into(), event.into());
                if let Value::Object(f) = fields {
                    m.extend(f);
                }
                Value::Object(m).to_string()
            }
            LogFormat::Text => {
                let mut s = format!("{ts} {level:<5} {event}");
                if let Value::Object(f) = fields {
                    for (k, v) in f {
                        match v {
                            Value::String(x) if !x.contains(' ') && !x.contains('\n') => {
                                s.push_str(&format!(" {k}={x}"))
                            }
                            Value::String(x) => s.push_str(&format!(" {k}={x:?}")),
                            v => s.push_str(&format!(" {k}={v}")),
                        }
                    }
                }
                s
            }
        };
        let _g = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    }
}

// ---------------------------------------------------------------- families

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Fw,
    Lb,
    Guard,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Fw, Family::Lb, Family::Guard];
    pub fn file(self) -> &'static str {
        match self {
            Family::Fw => "policy.yaml",
            Family::Lb => "lb.yaml",
            Family::Guard => "guard.yaml",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Family::Fw => "fw",
            Family::Lb => "lb",
            Family::Guard => "guard",
        }
    }
    pub fn paths(self) -> Paths {
        match self {
            Family::Fw => Paths::from_env(),
            Family::Lb => lb::status::paths(),
            Family::Guard => Paths::from_env_family("guard"),
        }
    }
}

/// What the daemon knows of one family's file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FamilyState {
    pub file: PathBuf,
    /// "absent", "in force", "refused" (a bad file: the running state is
    /// kept until the file changes), "failed" (the apply failed: tried
    /// again every retry interval).
    pub status: String,
    /// SHA-256 of the file as last read.
    pub sha256: Option<String>,
    /// The generation in force when it was applied or adopted.
    pub generation: Option<u32>,
    pub error: Option<String>,
    pub changed_unix: u64,
    pub applies_ok: u64,
    pub applies_refused: u64,
    pub applies_failed: u64,
    pub adopted: bool,
    #[serde(skip)]
    retry_at: Option<Instant>,
}

/// One backend's health, as the daemon tracks it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HealthState {
    pub service: String,
    pub backend: String,
    pub state: String,
    pub last: Option<String>,
    pub checks_ok: u64,
    pub checks_fail: u64,
    pub checks_timeout: u64,
    pub transitions: u64,
}

/// /run/moat/daemon/state.json: what `moat status` shows of the daemon.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DaemonFile {
    pub pid: u32,
    pub started_unix: u64,
    pub config_dir: PathBuf,
    pub netns: Option<String>,
    pub metrics: Option<String>,
    pub families: BTreeMap<Family, FamilyState>,
    pub health: Vec<HealthState>,
    pub updated_unix: u64,
}

pub fn daemon_paths() -> Paths {
    Paths::from_env_family("daemon")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The daemon's state file, if one exists, and whether its daemon lives
/// (it holds the lock; a SIGKILLed daemon's file stays, its lock does not).
pub fn read_daemon_file() -> Option<(DaemonFile, bool)> {
    let p = daemon_paths();
    let f: DaemonFile =
        serde_json::from_str(&fs::read_to_string(p.state_dir.join("state.json")).ok()?).ok()?;
    let alive = match fs::File::open(p.state_dir.join("lock")) {
        // SAFETY: flock on an fd we own; released when it closes.
        Ok(l) => {
            // SAFETY: as above.
            let rc = unsafe { libc::flock(l.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
            rc != 0
        }
        Err(_) => false,
    };
    Some((f, alive))
}

/// After a CLI apply: says so when a running daemon manages the family
/// from another file (the CLI's apply stands until that file changes or the
/// daemon restarts).
pub fn note_cli_apply(f: Family, applied: &Path) {
    let Some((d, true)) = read_daemon_file() else {
        return;
    };
    let theirs = d.config_dir.join(f.file());
    if !theirs.exists() {
        return;
    }
    let same = fs::canonicalize(&theirs).ok() == fs::canonicalize(applied).ok();
    if !same {
        eprintln!(
            "note: moat daemon (pid {}) manages this from {}: what you applied stands until that file changes or the daemon restarts (then the daemon applies its file)",
            d.pid,
            theirs.display()
        );
    }
}

/// Refuses a file (or directory) another user could have written.
fn check_owner(path: &Path, what: &str) -> Result<()> {
    let m = fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    // SAFETY: geteuid has no failure mode.
    let me = unsafe { libc::geteuid() };
    if m.uid() != 0 && m.uid() != me {
        bail!(
            "{}: {what} is owned by uid {}, not root: refused (whoever owns it could change what runs)",
            path.display(),
            m.uid()
        );
    }
    if m.mode() & 0o022 != 0 {
        bail!(
            "{}: {what} is writable by {} (mode {:o}): refused; chmod go-w {}",
            path.display(),
            if m.mode() & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            m.mode() & 0o7777,
            path.display()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- daemon

struct Daemon {
    o: DaemonOpts,
    log: Logger,
    lo: LogOpts,
    file: Arc<Mutex<DaemonFile>>,
    health: HealthRunner,
    by: String,
}

/// `moat daemon`.
pub fn run(o: DaemonOpts, lo: &LogOpts) -> Result<()> {
    sys::require_privileges("moat daemon")?;
    sys::ensure_bpffs()?;
    let log = Logger::new(o.log_format);
    let dp = daemon_paths();
    sys::private_dir(&dp.state_dir)?;
    // One daemon at a time: a lock the kernel drops when the process dies.
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dp.state_dir.join("lock"))
        .context("opening the daemon lock")?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = read_daemon_file().map(|(f, _)| f.pid).unwrap_or(0);
        bail!(
            "another moat daemon runs (pid {pid}, lock {}); nothing was changed",
            dp.state_dir.join("lock").display()
        );
    }
    if !o.config_dir.is_dir() {
        bail!(
            "{}: not a directory (create it, mode 0700 or 0755, owned by root, and put policy.yaml and/or lb.yaml in it)",
            o.config_dir.display()
        );
    }
    check_owner(&o.config_dir, "the config directory")?;
    let stop = sys::stop_flag()?;
    let file = Arc::new(Mutex::new(DaemonFile {
        pid: std::process::id(),
        started_unix: unix_now(),
        config_dir: o.config_dir.clone(),
        netns: o.netns.clone(),
        metrics: o.metrics.clone(),
        ..Default::default()
    }));
    let mut d = Daemon {
        health: HealthRunner::new(log.clone(), lo.clone(), o.netns.clone(), Arc::clone(&file)),
        o,
        log: log.clone(),
        lo: lo.clone(),
        file,
        by: format!("daemon (pid {})", std::process::id()),
    };
    log.event(
        "info",
        "started",
        json!({"pid": std::process::id(), "config_dir": d.o.config_dir, "netns": d.o.netns,
               "version": env!("CARGO_PKG_VERSION")}),
    );
    let mut ino = inotify::Inotify::init().context("inotify_init")?;
    ino.watches()
        .add(
            &d.o.config_dir,
            inotify::WatchMask::CLOSE_WRITE
                | inotify::WatchMask::MOVED_TO
                | inotify::WatchMask::MOVED_FROM
                | inotify::WatchMask::CREATE
                | inotify::WatchMask::DELETE
                | inotify::WatchMask::ATTRIB,
        )
        .with_context(|| format!("watching {}", d.o.config_dir.display()))?;
    for f in Family::ALL {
        d.reconcile(f, true);
    }
    d.save();
    if let Some(listen) = d.o.metrics.clone() {
        d.serve_metrics(&listen, Arc::clone(&stop))?;
    }
    notify_ready(&log);
    log.event("info", "watching", json!({"config_dir": d.o.config_dir}));
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    let mut last_look = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if d.o.duration.is_some_and(|dd| t0.elapsed() >= dd) {
            break;
        }
        let mut pfd = libc::pollfd {
            fd: ino.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 200) };
        let mut changed = false;
        if n > 0 {
            // Let an editor finish (write, rename) before reading.
            std::thread::sleep(Duration::from_millis(50));
            while let Ok(evs) = ino.read_events(&mut buf) {
                let mut any = false;
                for _ in evs {
                    any = true;
                }
                if !any {
                    break;
                }
                changed = true;
            }
        }
        let due = d.due();
        if changed || due || last_look.elapsed() >= Duration::from_secs(2) {
            last_look = Instant::now();
            for f in Family::ALL {
                d.reconcile(f, false);
            }
            d.save();
        }
    }
    d.health.stop_all();
    d.log.event(
        "info",
        "stopped",
        json!({"pid": std::process::id(),
        "note": "what runs keeps running (pinned); start the daemon again to resume checks"}),
    );
    d.save();
    drop(lock);
    Ok(())
}

/// Tells systemd (Type=notify) that the files are applied.
fn notify_ready(log: &Logger) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready])
    {
        log.event("warn", "sd_notify", json!({"error": e.to_string()}));
    }
}

impl Daemon {
    fn state(&self, f: Family) -> FamilyState {
        self.file
            .lock()
            .unwrap()
            .families
            .get(&f)
            .cloned()
            .unwrap_or_default()
    }

    fn set_state(&self, f: Family, s: FamilyState) {
        self.file.lock().unwrap().families.insert(f, s);
    }

    fn due(&self) -> bool {
        let now = Instant::now();
        self.file
            .lock()
            .unwrap()
            .families
            .values()
            .any(|s| s.retry_at.is_some_and(|t| t <= now))
    }

    fn save(&self) {
        save_file(&self.file, &self.log);
    }

    /// Brings one family in line with its file. `start`: the daemon just
    /// started (adopt what runs when it came from the same bytes).
    fn reconcile(&mut self, f: Family, start: bool) {
        let path = self.o.config_dir.join(f.file());
        let mut st = self.state(f);
        st.file = path.clone();
        let bytes = match source::read_regular(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if st.status != "absent" {
                    if !st.status.is_empty() {
                        self.log.event(
                            "warn",
                            "file_removed",
                            json!({"family": f.name(), "file": path,
                                   "note": "what runs is kept; detach with moat fw detach / moat lb detach"}),
                        );
                    }
                    st.status = "absent".into();
                    st.sha256 = None;
                    st.error = None;
                    st.retry_at = None;
                    st.changed_unix = unix_now();
                    if f == Family::Lb && start {
                        // Nothing to check without a file.
                        self.health.configure(None);
                    }
                }
                self.set_state(f, st);
                return;
            }
            Err(e) => {
                self.refuse(f, st, None, format!("{}: {e}", path.display()));
                return;
            }
        };
        let sha = source::digest(&bytes);
        let retry_due = st.retry_at.is_some_and(|t| t <= Instant::now());
        if st.sha256.as_deref() == Some(sha.as_str()) && !retry_due && !start {
            return; // seen and handled
        }
        if let Err(e) = check_owner(&path, "the file") {
            self.refuse(f, st, Some(sha), format!("{e:#}"));
            return;
        }
        let paths = f.paths();
        let canon = fs::canonicalize(&path).unwrap_or(path.clone());
        // Adopt what already runs these very bytes: the guard's enforcer,
        // or the generation the kernel runs.
        let adopt = if !start {
            None
        } else if f == Family::Guard {
            crate::guard::read_state()
                .filter(|gs| {
                    crate::guard::is_runner(gs.pid) && gs.sha256 == sha && gs.file == canon
                })
                .map(|gs| (None, json!({"enforcer_pid": gs.pid})))
        } else {
            source::in_force(&paths)
                .filter(|src| src.sha256 == sha && src.file == canon)
                .map(|src| {
                    (
                        Some(src.generation),
                        json!({"generation": src.generation, "applied_by": src.by}),
                    )
                })
        };
        if let Some((generation, mut fields)) = adopt {
            st.status = "in force".into();
            st.sha256 = Some(sha);
            st.generation = generation;
            st.error = None;
            st.retry_at = None;
            st.adopted = true;
            st.changed_unix = unix_now();
            fields["family"] = json!(f.name());
            fields["file"] = json!(path);
            self.log.event("info", "adopted", fields);
            self.set_state(f, st);
            if f == Family::Lb {
                self.health.configure(parse_lb(&bytes, &path).ok());
            }
            return;
        }
        // Validate first: a bad file is refused without touching anything.
        let checked: Result<Option<LbConfig>> = match f {
            Family::Fw => fw::apply::load_policy_within(&path, None).map(|_| None),
            Family::Lb => parse_lb(&bytes, &path).map(Some),
            Family::Guard => moat_core::sec::guard::load(&path)
                .map(|_| None)
                .map_err(|e| anyhow::anyhow!("{e}")),
        };
        let lbcfg = match checked {
            Ok(c) => c,
            Err(e) => {
                self.refuse(f, st, Some(sha), format!("{e:#}"));
                return;
            }
        };
        let t0 = Instant::now();
        let applied = match f {
            Family::Fw => fw::apply::apply_at(
                &paths,
                &fw::apply::ApplyOpts {
                    policy: path.clone(),
                    interfaces: vec![],
                    netns: self.o.netns.clone(),
                    mode: Mode::Native,
                    quiet: true,
                    memory_budget: None,
                },
                &self.lo,
                &mut |_, _, _| {},
            )
            .map(|r| (r.generation, r.interfaces)),
            Family::Lb => lb::apply::apply_at(
                &paths,
                &lb::apply::ApplyOpts {
                    config: path.clone(),
                    interfaces: vec![],
                    netns: self.o.netns.clone(),
                    skb: false,
                },
                &self.lo,
            )
            .map(|r| (r.generation, r.interfaces)),
            Family::Guard => crate::guard::start_enforcer(&path, None)
                .map(|(pid, _)| (pid, vec![format!("enforcer pid {pid}")])),
        };
        match applied {
            Ok((generation, ifaces)) => {
                if f == Family::Guard {
                    // The enforcer's own state.json records the file and its digest.
                } else if let Err(e) = source::record(&paths, &path, &bytes, generation, &self.by) {
                    self.log
                        .event("warn", "source_record", json!({"error": format!("{e:#}")}));
                }
                st.status = "in force".into();
                st.sha256 = Some(sha);
                st.generation = (f != Family::Guard).then_some(generation);
                st.error = None;
                st.retry_at = None;
                st.adopted = false;
                st.applies_ok += 1;
                st.changed_unix = unix_now();
                self.log.event(
                    "info",
                    "applied",
                    json!({"family": f.name(), "file": path, "generation": generation,
                           "interfaces": ifaces, "took_ms": t0.elapsed().as_millis() as u64}),
                );
                self.set_state(f, st);
                if f == Family::Lb {
                    self.health.configure(lbcfg);
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let again = st.error.as_deref() != Some(msg.as_str()) || st.status != "failed";
                st.status = "failed".into();
                st.sha256 = Some(sha);
                st.applies_failed += 1;
                st.retry_at = Some(Instant::now() + self.o.retry);
                st.changed_unix = unix_now();
                if again {
                    self.log.event(
                        "error",
                        "apply_failed",
                        json!({"family": f.name(), "file": path, "error": msg,
                               "retry_s": self.o.retry.as_secs_f64(),
                               "note": "what ran before keeps running"}),
                    );
                }
                st.error = Some(msg);
                self.set_state(f, st);
            }
        }
    }

    fn refuse(&mut self, f: Family, mut st: FamilyState, sha: Option<String>, why: String) {
        st.status = "refused".into();
        st.sha256 = sha;
        st.applies_refused += 1;
        st.retry_at = None;
        st.changed_unix = unix_now();
        self.log.event(
            "error",
            "refused",
            json!({"family": f.name(), "file": st.file, "error": why,
                   "note": "the running state is kept; fix the file and save it again"}),
        );
        st.error = Some(why);
        self.set_state(f, st);
    }

    fn serve_metrics(&self, listen: &str, stop: Arc<AtomicBool>) -> Result<()> {
        let file = Arc::clone(&self.file);
        let log = self.log.clone();
        let listen = listen.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                let paths = Paths::from_env();
                let lb_paths = lb::status::paths();
                let tx2 = tx.clone();
                let r = crate::http::serve(
                    &listen,
                    crate::http::Limits::default(),
                    None,
                    stop,
                    move |addr| {
                        let _ = tx2.send(Ok(addr));
                    },
                    move |path| {
                        use hyper::StatusCode;
                        if path != "/metrics" {
                            return (StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".into());
                        }
                        let mut text = crate::fw::observe::families_metrics(&paths, &lb_paths)
                            .unwrap_or_default();
                        text.push_str(&metrics_text(&file.lock().unwrap()));
                        (
                            StatusCode::OK,
                            "text/plain; version=0.0.4; charset=utf-8",
                            text,
                        )
                    },
                );
                if let Err(e) = r {
                    let _ = tx.send(Err(format!("{e:#}")));
                }
            })?;
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(addr)) => {
                log.event(
                    "info",
                    "metrics",
                    json!({"listen": addr.to_string(), "url": format!("http://{addr}/metrics")}),
                );
                Ok(())
            }
            Ok(Err(e)) => bail!(
                "metrics on {}: {e}",
                self.o.metrics.as_deref().unwrap_or("")
            ),
            Err(_) => bail!("metrics server did not start"),
        }
    }
}

/// Writes the daemon's state file (a temporary file renamed into place).
fn save_file(file: &Mutex<DaemonFile>, log: &Logger) {
    let p = daemon_paths();
    let mut f = file.lock().unwrap();
    f.updated_unix = unix_now();
    let text = match serde_json::to_string_pretty(&*f) {
        Ok(t) => t,
        Err(_) => return,
    };
    drop(f);
    let r = sys::write_private_atomic(&p.state_dir.join("state.json"), text.as_bytes());
    if let Err(e) = r {
        log.event("warn", "state_file", json!({"error": format!("{e:#}")}));
    }
}

fn parse_lb(bytes: &[u8], path: &Path) -> Result<LbConfig> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| anyhow!("{}: not UTF-8 text ({e})", path.display()))?;
    moat_core::lb::parse(text, path).map_err(|e| anyhow!("{e}"))
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The daemon's own metrics (next to the families').
pub fn metrics_text(d: &DaemonFile) -> String {
    let mut t = String::new();
    t.push_str(
        "# HELP moat_daemon_up The agent runs.\n# TYPE moat_daemon_up gauge\nmoat_daemon_up 1\n",
    );
    t.push_str("# HELP moat_daemon_config_ok A file of the config directory is in force (1) or was refused or failed (0).\n# TYPE moat_daemon_config_ok gauge\n");
    for (f, s) in &d.families {
        if s.status == "absent" {
            continue;
        }
        t.push_str(&format!(
            "moat_daemon_config_ok{{family=\"{}\",file=\"{}\"}} {}\n",
            f.name(),
            esc(&s.file.display().to_string()),
            u8::from(s.status == "in force")
        ));
    }
    t.push_str("# HELP moat_daemon_applies_total Applies of a config file by result.\n# TYPE moat_daemon_applies_total counter\n");
    for (f, s) in &d.families {
        for (r, n) in [
            ("ok", s.applies_ok),
            ("refused", s.applies_refused),
            ("failed", s.applies_failed),
        ] {
            t.push_str(&format!(
                "moat_daemon_applies_total{{family=\"{}\",result=\"{r}\"}} {n}\n",
                f.name()
            ));
        }
    }
    t.push_str("# HELP moat_lb_health_checks_total Health checks of a backend by result.\n# TYPE moat_lb_health_checks_total counter\n");
    for h in &d.health {
        for (r, n) in [
            ("ok", h.checks_ok),
            ("fail", h.checks_fail),
            ("timeout", h.checks_timeout),
        ] {
            t.push_str(&format!(
                "moat_lb_health_checks_total{{service=\"{}\",backend=\"{}\",result=\"{r}\"}} {n}\n",
                esc(&h.service),
                esc(&h.backend)
            ));
        }
    }
    t.push_str("# HELP moat_lb_health_transitions_total Backends taken down or brought up by their health checks.\n# TYPE moat_lb_health_transitions_total counter\n");
    for h in &d.health {
        t.push_str(&format!(
            "moat_lb_health_transitions_total{{service=\"{}\",backend=\"{}\"}} {}\n",
            esc(&h.service),
            esc(&h.backend),
            h.transitions
        ));
    }
    t
}

// ---------------------------------------------------------------- health

/// One thread per service with `health:`; each round checks every backend
/// of the service at once (one short thread each, inside the balancer's
/// network namespace) and applies fall/rise transitions through
/// `moat_host::lb::apply::set_backend` (the same path as `moat lb backend`,
/// under the same lock).
struct HealthRunner {
    log: Logger,
    lo: LogOpts,
    netns: Option<String>,
    file: Arc<Mutex<DaemonFile>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Consecutive results, kept across reconfigurations by (service, backend).
    trackers: Arc<Mutex<HashMap<(String, BackendId), health::Tracker>>>,
}

impl HealthRunner {
    fn new(
        log: Logger,
        lo: LogOpts,
        netns: Option<String>,
        file: Arc<Mutex<DaemonFile>>,
    ) -> HealthRunner {
        HealthRunner {
            log,
            lo,
            netns,
            file,
            stop: Arc::new(AtomicBool::new(false)),
            threads: vec![],
            trackers: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn stop_all(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.stop = Arc::new(AtomicBool::new(false));
    }

    /// Checks what `cfg` asks for (None: nothing), replacing what ran.
    fn configure(&mut self, cfg: Option<LbConfig>) {
        self.stop_all();
        let Some(cfg) = cfg else {
            self.file.lock().unwrap().health.clear();
            return;
        };
        {
            // Forget backends no longer configured.
            let keep: Vec<(String, BackendId)> = cfg
                .services
                .iter()
                .filter(|s| s.health.is_some())
                .flat_map(|s| s.backends.iter().map(|b| (s.name.clone(), b.id())))
                .collect();
            self.trackers
                .lock()
                .unwrap()
                .retain(|k, _| keep.contains(k));
            self.file.lock().unwrap().health.retain(|h| {
                keep.iter()
                    .any(|(s, b)| *s == h.service && b.to_string() == h.backend)
            });
        }
        for s in cfg.services.iter() {
            let Some(h) = s.health.clone() else { continue };
            let backends: Vec<BackendId> = s.backends.iter().map(|b| b.id()).collect();
            let (svc, stop, log, lo, netns, file, trackers) = (
                s.name.clone(),
                Arc::clone(&self.stop),
                self.log.clone(),
                self.lo.clone(),
                self.netns.clone(),
                Arc::clone(&self.file),
                Arc::clone(&self.trackers),
            );
            let t = std::thread::Builder::new()
                .name(format!("health-{svc}"))
                .spawn(move || {
                    health_loop(
                        &svc,
                        &backends,
                        &h,
                        &stop,
                        &log,
                        &lo,
                        netns.as_deref(),
                        &file,
                        &trackers,
                    )
                });
            match t {
                Ok(t) => self.threads.push(t),
                Err(e) => self.log.event(
                    "error",
                    "health",
                    json!({"service": s.name, "error": e.to_string()}),
                ),
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn health_loop(
    svc: &str,
    backends: &[BackendId],
    h: &Health,
    stop: &AtomicBool,
    log: &Logger,
    lo: &LogOpts,
    netns: Option<&str>,
    file: &Mutex<DaemonFile>,
    trackers: &Mutex<HashMap<(String, BackendId), health::Tracker>>,
) {
    let paths = lb::status::paths();
    let interval = Duration::from_millis(h.interval_ms.max(10));
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // The kernel holds each backend's state (the operator may have
        // changed it with `moat lb backend`).
        let r = lb::status::running(&paths);
        let results: Vec<(BackendId, health::Outcome)> = std::thread::scope(|sc| {
            let hs: Vec<_> = backends
                .iter()
                .map(|id| {
                    let id = *id;
                    sc.spawn(move || {
                        let o = match sys::in_netns(netns, || Ok(health::check(id.addr, h))) {
                            Ok(o) => o,
                            Err(e) => health::Outcome::Fail(format!("{e:#}")),
                        };
                        (id, o)
                    })
                })
                .collect();
            hs.into_iter().filter_map(|t| t.join().ok()).collect()
        });
        if stop.load(Ordering::Relaxed) {
            break;
        }
        for (id, o) in results {
            let kernel = encode::state_now(&r, svc, id);
            let key = (svc.to_string(), id);
            let to = {
                let mut tr = trackers.lock().unwrap();
                let t = tr
                    .entry(key)
                    .or_insert_with(|| health::Tracker::new(kernel.unwrap_or(State::Up)));
                if let Some(k) = kernel {
                    t.state = k;
                }
                t.observe(&o, h).map(|to| (to, t.fails, t.oks))
            };
            let mut transitioned = false;
            if let Some((to, fails, oks)) = to {
                match lb::apply::set_backend(&paths, svc, &id.to_string(), to, lo) {
                    Ok((_, was, rep)) => {
                        transitioned = true;
                        if let Some(t) = trackers.lock().unwrap().get_mut(&(svc.to_string(), id)) {
                            t.state = to;
                        }
                        log.event(
                            if to == State::Down { "warn" } else { "info" },
                            if to == State::Down {
                                "backend_down"
                            } else {
                                "backend_up"
                            },
                            json!({"service": svc, "backend": id.to_string(), "from": was.name(),
                                   "to": to.name(), "generation": rep.generation,
                                   "failures": fails, "successes": oks,
                                   "last": match &o { health::Outcome::Ok => "ok".to_string(),
                                                      health::Outcome::Fail(w) => w.clone() },
                                   "connections": if to == State::Down && h.reset_on_down {
                                       "balanced again (on_down: reset)" } else { "kept (drain)" }}),
                        );
                    }
                    Err(e) => log.event(
                        "error",
                        "health_transition_failed",
                        json!({"service": svc, "backend": id.to_string(), "to": to.name(),
                               "error": format!("{e:#}")}),
                    ),
                }
            }
            let state = trackers
                .lock()
                .unwrap()
                .get(&(svc.to_string(), id))
                .map(|t| t.state.name())
                .unwrap_or("up");
            let mut f = file.lock().unwrap();
            let name = id.to_string();
            let idx = match f
                .health
                .iter()
                .position(|x| x.service == svc && x.backend == name)
            {
                Some(i) => i,
                None => {
                    f.health.push(HealthState {
                        service: svc.into(),
                        backend: name.clone(),
                        ..Default::default()
                    });
                    f.health.len() - 1
                }
            };
            let e = &mut f.health[idx];
            e.state = state.into();
            match o.label() {
                "ok" => e.checks_ok += 1,
                "timeout" => e.checks_timeout += 1,
                _ => e.checks_fail += 1,
            }
            e.last = Some(match &o {
                health::Outcome::Ok => "ok".into(),
                health::Outcome::Fail(w) => w.clone(),
            });
            if transitioned {
                e.transitions += 1;
            }
        }
        save_file(file, log);
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        if sys::sleep_unless(stop, next - now) {
            break;
        }
    }
}

// ---------------------------------------------------------------- unit

/// `moat daemon --install-unit`: writes the unit for this binary and
/// config directory (DIR/moat.service; default /etc/systemd/system).
pub fn install_unit(unit_dir: &Path, config_dir: &Path) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this program's path")?;
    let text = unit_text(&exe, config_dir);
    fs::create_dir_all(unit_dir).with_context(|| format!("creating {}", unit_dir.display()))?;
    let dest = unit_dir.join("moat.service");
    let tmp = unit_dir.join(".moat.service.tmp");
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &dest).with_context(|| format!("writing {}", dest.display()))?;
    Ok(dest)
}

/// The shipped unit with ExecStart naming `exe` and `config_dir`.
pub fn unit_text(exe: &Path, config_dir: &Path) -> String {
    UNIT.lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                format!(
                    "ExecStart={} daemon --config-dir {}",
                    exe.display(),
                    config_dir.display()
                )
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}
