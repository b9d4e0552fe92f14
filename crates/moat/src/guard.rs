//! `moat guard`: check, apply, status, detach and test a runtime security
//! policy. The enforcer is one process (`moat guard run`, started by apply
//! in its own session) that holds the programs, links and fanotify marks of
//! [`moat_host::sec::guard::Guard`]; its state is `STATE_ROOT/guard/`
//! (state.json, events.jsonl, guard.log) and its per-rule counts are pinned
//! at `PIN_ROOT/guard/<pid>/counts`.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use moat_abi::sec as abi;
use moat_core::sec::guard::{self as g, Action, GuardPolicy};
use moat_host::{
    loader::LogOpts,
    sec::guard::{Guard, GuardEvent, GuardOpts, cgroup2_root},
    source, sys,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Where the guard keeps its state.
pub fn state_dir() -> PathBuf {
    PathBuf::from(std::env::var("MOAT_STATE_ROOT").unwrap_or_else(|_| "/run/moat".into()))
        .join("guard")
}

pub fn pin_dir(pid: u32) -> PathBuf {
    PathBuf::from(std::env::var("MOAT_PIN_ROOT").unwrap_or_else(|_| sys::PIN_ROOT.into()))
        .join("guard")
        .join(pid.to_string())
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuleState {
    pub name: String,
    pub on: String,
    pub action: String,
    pub mechanism: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GuardState {
    pub pid: u32,
    pub file: PathBuf,
    pub sha256: String,
    pub started_unix: u64,
    pub rules: Vec<RuleState>,
    pub missing: Vec<(String, String)>,
    pub programs: Vec<String>,
    pub dir_marks: usize,
}

pub fn read_state() -> Option<GuardState> {
    let b = fs::read(state_dir().join("state.json")).ok()?;
    serde_json::from_slice(&b).ok()
}

/// True if `pid` is a live `moat guard run`.
pub fn is_runner(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let a: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            a.windows(2).any(|w| w[0] == b"guard" && w[1] == b"run")
        })
        .unwrap_or(false)
}

fn load_policy(path: &Path) -> Result<GuardPolicy> {
    g::load(path).map_err(|e| anyhow!("{e}"))
}

/// `moat guard check -f FILE`.
pub fn check(path: &Path, json_out: bool) -> Result<()> {
    let p = load_policy(path)?;
    let rows: Vec<_> = p
        .rules
        .iter()
        .map(|r| {
            let m = g::mechanism(r).expect("checked");
            (r, m)
        })
        .collect();
    if json_out {
        println!(
            "{}",
            json!({
                "policy": path,
                "ok": true,
                "rules": rows.iter().map(|(r, m)| json!({
                    "name": r.name, "on": r.on.name(), "action": r.action.name(),
                    "mechanism": m, "enforced_by": m.describe(),
                })).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    println!("{}: ok ({} rules)", path.display(), p.rules.len());
    for (r, m) in rows {
        println!(
            "  {:<28} on {:<8} {:<5} by {}",
            r.name,
            r.on.name(),
            r.action.name(),
            m.describe()
        );
    }
    Ok(())
}

fn event_json(p: &GuardPolicy, e: &GuardEvent) -> serde_json::Value {
    let mut v = serde_json::to_value(&e.event).unwrap_or_default();
    v["rule"] = json!(e.rule);
    v["action"] = json!(e.action.name());
    v["rule_action"] = json!(e.rule_action.name());
    if let Some(pth) = &e.path {
        v["path"] = json!(pth);
    }
    if let Some(a) = e.access {
        v["access"] = json!(a);
    }
    v["ancestors"] = serde_json::to_value(&e.ancestors).unwrap_or_default();
    v["policy"] = json!(p.source);
    v["time"] = json!(humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string());
    v
}

const EVENTS_MAX: u64 = 64 << 20;

/// Appends to events.jsonl (0600), rotating to events.jsonl.1 past 64 MiB.
struct EventLog {
    path: PathBuf,
    f: Option<fs::File>,
}

impl EventLog {
    fn open(dir: &Path) -> EventLog {
        let path = dir.join("events.jsonl");
        EventLog {
            f: Self::file(&path),
            path,
        }
    }
    fn file(p: &Path) -> Option<fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(p)
            .ok()
    }
    fn write(&mut self, v: &serde_json::Value) {
        if let Some(f) = &mut self.f {
            let _ = writeln!(f, "{v}");
            if f.metadata().map(|m| m.len() > EVENTS_MAX).unwrap_or(false) {
                let _ = fs::rename(&self.path, self.path.with_extension("jsonl.1"));
                self.f = Self::file(&self.path);
            }
        }
    }
}

/// `moat guard run -f FILE` (started by apply): enforces until SIGTERM.
pub fn run(path: &Path, ring_bytes: Option<u32>, log: &LogOpts) -> Result<()> {
    let policy = load_policy(path)?;
    let bytes =
        source::read_regular(path).with_context(|| format!("reading {}", path.display()))?;
    let dir = state_dir();
    sys::private_dir(&dir)?;
    let stop = sys::stop_flag()?;
    // Opened before any mark exists (an open rule can never hold it up).
    let mut elog = EventLog::open(&dir);
    let mut gd = Guard::start(
        policy,
        &GuardOpts {
            ring_bytes,
            protected: vec![dir.clone()],
            ..Default::default()
        },
        log,
    )?;
    let pid = std::process::id();
    gd.pin_counts(&pin_dir(pid))?;
    let st = GuardState {
        pid,
        file: fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        sha256: source::digest(&bytes),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        rules: gd
            .policy
            .rules
            .iter()
            .zip(&gd.compiled.mechanisms)
            .map(|(r, m)| RuleState {
                name: r.name.clone(),
                on: r.on.name().into(),
                action: r.action.name().into(),
                mechanism: m.describe().into(),
            })
            .collect(),
        missing: gd.compiled.missing.clone(),
        programs: gd
            .programs
            .iter()
            .map(|p| format!("{} (prog id {})", p.name, p.id))
            .collect(),
        dir_marks: gd.dir_marks(),
    };
    sys::write_private_atomic(&dir.join("state.json"), &serde_json::to_vec_pretty(&st)?)?;
    println!("ready {pid}");
    let _ = std::io::stdout().flush();
    eprintln!(
        "moat guard: enforcing {} ({} rules; programs {})",
        path.display(),
        st.rules.len(),
        st.programs.join(", ")
    );
    let pol = gd.policy.clone();
    let r = gd.serve(&stop, None, &mut |e| elog.write(&event_json(&pol, e)));
    // Leave the state to a successor that replaced us.
    if read_state().is_some_and(|s| s.pid == pid) {
        let _ = fs::remove_file(dir.join("state.json"));
    }
    let _ = fs::remove_dir_all(pin_dir(pid));
    eprintln!("moat guard: stopped");
    r
}

fn stop_runner(pid: u32) {
    if !is_runner(pid) {
        return;
    }
    // SAFETY: plain syscall to a process we checked is a moat guard runner.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    while is_runner(pid) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_runner(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let _ = fs::remove_dir_all(pin_dir(pid));
}

/// `moat guard apply -f FILE`: starts an enforcer for FILE, then stops the
/// one it replaces (no gap: both enforce for a moment).
pub fn apply(path: &Path, ring_bytes: Option<u32>) -> Result<()> {
    let (pid, policy) = start_enforcer(path, ring_bytes)?;
    println!(
        "guard: {} applied ({} rules), enforcer pid {pid}",
        path.display(),
        policy.rules.len(),
    );
    for r in &policy.rules {
        println!(
            "  {:<28} on {:<8} {:<5} by {}",
            r.name,
            r.on.name(),
            r.action.name(),
            g::mechanism(r).expect("checked").describe()
        );
    }
    Ok(())
}

/// Starts an enforcer for FILE (checked first), waits until it enforces,
/// then stops the one it replaces; returns its pid. On failure nothing
/// changed: the old enforcer (if any) keeps running.
pub fn start_enforcer(path: &Path, ring_bytes: Option<u32>) -> Result<(u32, GuardPolicy)> {
    let policy = load_policy(path)?;
    sys::require_privileges("moat guard apply")?;
    let dir = state_dir();
    sys::private_dir(&dir)?;
    let old = read_state();
    let logf = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("guard.log"))
        .context("opening guard.log")?;
    let exe = std::env::current_exe().context("finding the moat binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("guard")
        .arg("run")
        .arg("-f")
        .arg(fs::canonicalize(path)?);
    if let Some(r) = ring_bytes {
        cmd.arg("--ring-size").arg(r.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(logf.try_clone()?);
    // SAFETY: setsid is async-signal-safe; the runner leaves our session
    // so a terminal's hangup does not end it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting moat guard run")?;
    let out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut l = String::new();
        let _ = BufReader::new(out).read_line(&mut l);
        let _ = tx.send(l);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    if !line.starts_with("ready ") {
        let _ = child.kill();
        let _ = child.wait();
        let tail = fs::read_to_string(dir.join("guard.log")).unwrap_or_default();
        let last: Vec<&str> = tail.lines().rev().take(5).collect();
        bail!(
            "the enforcer did not start; nothing changed (guard.log: {})",
            last.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    if let Some(o) = old.filter(|o| o.pid != child.id()) {
        stop_runner(o.pid);
    }
    // The runner lives on; it is not our child to wait for.
    let pid = child.id();
    std::mem::forget(child);
    Ok((pid, policy))
}

fn counts_of(pid: u32, n: usize) -> Option<Vec<abi::SecRuleStat>> {
    let m = aya::maps::MapData::from_pin(pin_dir(pid).join("counts")).ok()?;
    let a: aya::maps::Array<_, abi::SecRuleStat> =
        aya::maps::Array::try_from(aya::maps::Map::Array(m)).ok()?;
    (0..n as u32).map(|i| a.get(&i, 0).ok()).collect()
}

/// `moat guard status [--json]`.
pub fn status(json_out: bool) -> Result<()> {
    sys::require_privileges("moat guard status")?;
    let Some(st) = read_state().filter(|s| is_runner(s.pid)) else {
        if json_out {
            println!("{}", json!({"running": false}));
        } else {
            println!("guard: not running");
        }
        return Ok(());
    };
    let counts = counts_of(st.pid, st.rules.len()).unwrap_or_default();
    if json_out {
        println!(
            "{}",
            json!({
                "running": true,
                "pid": st.pid,
                "file": st.file,
                "sha256": st.sha256,
                "programs": st.programs,
                "dir_marks": st.dir_marks,
                "missing": st.missing,
                "rules": st.rules.iter().enumerate().map(|(i, r)| {
                    let c = counts.get(i).copied().unwrap_or_default();
                    json!({"name": r.name, "on": r.on, "action": r.action, "mechanism": r.mechanism,
                           "matched": c.matched, "acted": c.acted, "events": c.events, "lost": c.lost})
                }).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    println!(
        "guard: running (pid {}), {} ({} rules)",
        st.pid,
        st.file.display(),
        st.rules.len()
    );
    println!(
        "  {:<28} {:<8} {:<6} {:>9} {:>9} {:>9} {:>6}  mechanism",
        "rule", "on", "action", "matched", "acted", "events", "lost"
    );
    for (i, r) in st.rules.iter().enumerate() {
        let c = counts.get(i).copied().unwrap_or_default();
        println!(
            "  {:<28} {:<8} {:<6} {:>9} {:>9} {:>9} {:>6}  {}",
            r.name, r.on, r.action, c.matched, c.acted, c.events, c.lost, r.mechanism
        );
    }
    for (rule, p) in &st.missing {
        println!("  note: {rule}: {p} does not exist here (matches nothing)");
    }
    Ok(())
}

/// The kernel's process table of the running enforcer (pinned), with its pid.
pub fn kernel_procs() -> Option<(u32, Vec<moat_host::sec::ProcInfo>)> {
    let st = read_state().filter(|s| is_runner(s.pid))?;
    moat_host::sec::pinned_table(&pin_dir(st.pid).join("procs")).map(|v| (st.pid, v))
}

/// The guard's Prometheus metrics (None when no enforcer runs): per rule
/// from the counts the enforcer pinned.
pub fn metrics_text() -> Option<String> {
    let st = read_state().filter(|s| is_runner(s.pid))?;
    let c = counts_of(st.pid, st.rules.len())?;
    let mut t = String::new();
    t.push_str("# HELP moat_sec_guard_rules Rules the guard enforces.\n# TYPE moat_sec_guard_rules gauge\n");
    t.push_str(&format!("moat_sec_guard_rules {}\n", st.rules.len()));
    t.push_str("# HELP moat_sec_events_total Events written by guard rules, per hook (operation) and rule.\n# TYPE moat_sec_events_total counter\n");
    for (r, c) in st.rules.iter().zip(&c) {
        t.push_str(&format!(
            "moat_sec_events_total{{hook=\"{}\",rule=\"{}\"}} {}\n",
            r.on, r.name, c.events
        ));
    }
    t.push_str("# HELP moat_sec_events_lost_total Guard events lost (ring buffer full), per hook.\n# TYPE moat_sec_events_lost_total counter\n");
    let mut lost: std::collections::BTreeMap<&str, u64> = Default::default();
    for (r, c) in st.rules.iter().zip(&c) {
        *lost.entry(r.on.as_str()).or_default() += c.lost;
    }
    for (h, n) in lost {
        t.push_str(&format!("moat_sec_events_lost_total{{hook=\"{h}\"}} {n}\n"));
    }
    t.push_str("# HELP moat_sec_matched_total Operations a rule matched (exact, also when events are lost).\n# TYPE moat_sec_matched_total counter\n");
    for (r, c) in st.rules.iter().zip(&c) {
        t.push_str(&format!(
            "moat_sec_matched_total{{rule=\"{}\"}} {}\n",
            r.name, c.matched
        ));
    }
    for (metric, action, help) in [
        (
            "moat_sec_denied_total",
            "deny",
            "Operations denied (EPERM), per rule.",
        ),
        (
            "moat_sec_killed_total",
            "kill",
            "Processes killed at the operation, per rule.",
        ),
    ] {
        t.push_str(&format!(
            "# HELP {metric} {help}\n# TYPE {metric} counter\n"
        ));
        for (r, c) in st.rules.iter().zip(&c).filter(|(r, _)| r.action == action) {
            t.push_str(&format!("{metric}{{rule=\"{}\"}} {}\n", r.name, c.acted));
        }
    }
    Some(t)
}

/// `moat guard detach`.
pub fn detach() -> Result<()> {
    sys::require_privileges("moat guard detach")?;
    let dir = state_dir();
    match read_state() {
        Some(st) => {
            stop_runner(st.pid);
            let _ = fs::remove_file(dir.join("state.json"));
            println!("guard: detached (enforcer pid {} stopped)", st.pid);
        }
        None => println!("guard: nothing attached"),
    }
    // Pins of enforcers that died without cleaning up.
    if let Ok(rd) = fs::read_dir(pin_dir(0).parent().expect("guard dir")) {
        for e in rd.flatten() {
            let pid: u32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
            if !is_runner(pid) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

/// `moat guard test -f FILE -- CMD...`: CMD in a throwaway cgroup under the
/// policy in log-only mode; prints what would have been denied or killed.
pub fn test(path: &Path, cmdline: &[String], json_out: bool, log: &LogOpts) -> Result<i32> {
    let policy = load_policy(path)?;
    sys::require_privileges("moat guard test")?;
    if cmdline.is_empty() {
        bail!(
            "give the command after --: moat guard test -f {} -- CMD",
            path.display()
        );
    }
    let root = cgroup2_root()?;
    let cg = root.join(format!("moat-guard-test-{}", std::process::id()));
    fs::create_dir(&cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
    let r = (|| -> Result<(i32, Vec<GuardEvent>)> {
        let mut gd = Guard::start(
            policy.clone(),
            &GuardOpts {
                log_only: true,
                scope: Some(cg.clone()),
                ring_bytes: None,
                protected: vec![state_dir()],
            },
            log,
        )?;
        let procs = cg.join("cgroup.procs");
        let mut c = Command::new(&cmdline[0]);
        c.args(&cmdline[1..]);
        // SAFETY: only writes this process's pid into the cgroup before exec.
        unsafe {
            c.pre_exec(move || {
                fs::write(&procs, std::process::id().to_string())?;
                Ok(())
            });
        }
        let mut child = c
            .spawn()
            .with_context(|| format!("running {}", cmdline[0]))?;
        let stop = std::sync::atomic::AtomicBool::new(false);
        let mut evs = Vec::new();
        let code = loop {
            gd.serve(
                &stop,
                Some(Instant::now() + Duration::from_millis(50)),
                &mut |e| evs.push(e.clone()),
            )?;
            if let Some(s) = child.try_wait()? {
                break s.code().unwrap_or(128);
            }
        };
        // Descendants left behind end with the cgroup.
        let _ = fs::write(cg.join("cgroup.kill"), "1");
        gd.serve(
            &stop,
            Some(Instant::now() + Duration::from_millis(300)),
            &mut |e| evs.push(e.clone()),
        )?;
        Ok((code, evs))
    })();
    for _ in 0..100 {
        if fs::remove_dir(&cg).is_ok() || !cg.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, evs) = r?;
    let mut would = 0;
    for e in &evs {
        if json_out {
            let mut v = event_json(&policy, e);
            v["would"] = json!(e.rule_action.name());
            println!("{v}");
        } else {
            let what = match e.rule_action {
                Action::Deny => "WOULD DENY",
                Action::Kill => "WOULD KILL",
                Action::Log => "log       ",
            };
            let detail = e
                .path
                .clone()
                .or_else(|| {
                    e.event
                        .remote
                        .as_ref()
                        .or(e.event.local.as_ref())
                        .map(|r| format!("{r} port {}", e.event.port.unwrap_or(0)))
                })
                .unwrap_or_else(|| e.event.binary.clone());
            println!(
                "{what} {:<24} {:<7} pid {:<7} {} {}",
                e.rule, e.event.event, e.event.pid, e.event.binary, detail
            );
        }
        if e.rule_action != Action::Log {
            would += 1;
        }
    }
    if !json_out {
        println!(
            "{} events, {would} would have been denied or killed; the command exited {code}",
            evs.len()
        );
    }
    Ok(code)
}
