//! `moat watch` and `moat ps`: runtime security's events and process table,
//! rendered. The kernel side is moat-host's [`moat_host::sec::Watcher`].

use std::{
    collections::BTreeMap,
    io::Write,
    path::PathBuf,
    sync::atomic::Ordering,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use moat_abi::sec as abi;
use moat_core::sec::{Event, Node};
use moat_host::{
    loader::LogOpts,
    sec::{ProcInfo, WatchOpts, Watcher, cwd_of, lineage_of, proc_snapshot},
    sys,
};
use serde_json::json;

pub struct WatchCmd {
    pub json: bool,
    pub exec: bool,
    pub exit: bool,
    pub binaries: Vec<PathBuf>,
    pub cgroup: Option<PathBuf>,
    pub ring_bytes: Option<u32>,
    pub duration: Option<Duration>,
    pub files: Vec<String>,
    pub connect: bool,
}

/// Boot-clock ns -> wall clock, for event times.
fn boot_to_wall(ns: u64) -> SystemTime {
    let boot_now = moat_host::fw::observe::clock_ns(libc::CLOCK_BOOTTIME);
    let now = SystemTime::now();
    if ns <= boot_now {
        now - Duration::from_nanos(boot_now - ns)
    } else {
        now
    }
}

/// `moat watch`.
pub fn watch(c: &WatchCmd, log: &LogOpts) -> Result<()> {
    // Nothing asked: exec and exit.
    let (exec, exit) = if !c.exec && !c.exit && c.files.is_empty() && !c.connect {
        (true, true)
    } else {
        (c.exec, c.exit)
    };
    let mut w = Watcher::start(
        &WatchOpts {
            exec,
            exit,
            binaries: c.binaries.clone(),
            cgroup: c.cgroup.clone(),
            ring_bytes: c.ring_bytes,
            files: c.files.clone(),
            connect: c.connect,
        },
        log,
    )?;
    let stop = sys::stop_flag()?;
    eprintln!(
        "attached: {} (prog ids {}); {} processes from /proc; events: {}{}{}{}",
        w.programs
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        w.programs
            .iter()
            .map(|p| p.id.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        w.seeded,
        [
            exec.then_some("exec"),
            exit.then_some("exit"),
            (!c.files.is_empty()).then_some("open"),
            c.connect.then_some("connect"),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", "),
        if c.binaries.is_empty() {
            String::new()
        } else {
            format!(
                "; binaries {}",
                c.binaries
                    .iter()
                    .map(|b| b.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        c.cgroup
            .as_ref()
            .map(|p| format!("; cgroup {} and below", p.display()))
            .unwrap_or_default(),
        w.open_via
            .as_ref()
            .map(|v| format!("; opens through {v}"))
            .unwrap_or_default()
    );
    let t0 = Instant::now();
    let mut got: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut out = std::io::stdout().lock();
    let mut guard_tail = GuardTail::open();
    loop {
        guard_tail.relay(&mut out, c.json, &mut got)?;
        let done = stop.load(Ordering::Relaxed) || c.duration.is_some_and(|d| t0.elapsed() >= d);
        let evs = w.poll(if done {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        });
        for raw in &evs {
            let e = Event::decode(raw);
            *got.entry(e.event).or_default() += 1;
            if raw.kind == abi::EV_EXEC {
                w.lineage.insert(
                    e.exec_id,
                    Node {
                        pid: e.pid,
                        binary: e.binary.clone(),
                        parent: e.parent_exec_id,
                        exited: false,
                        cgroup: e.cgroup_id,
                    },
                );
            }
            let ancestors = w
                .lineage
                .ancestors_with(e.parent_exec_id, 32, e.cgroup_id, |x| w.kernel_node(x));
            let cwd = if raw.kind == abi::EV_EXEC {
                cwd_of(e.pid)
            } else {
                None
            };
            let time = humantime::format_rfc3339_millis(boot_to_wall(e.ktime_ns)).to_string();
            if c.json {
                let mut v = serde_json::to_value(&e)?;
                v["time"] = json!(time);
                v["ancestors"] = serde_json::to_value(&ancestors)?;
                if let Some(d) = &cwd {
                    v["cwd"] = json!(d);
                }
                writeln!(out, "{v}")?;
            } else {
                let chain: Vec<String> = ancestors
                    .iter()
                    .map(|a| format!("{}({})", short(&a.binary), a.pid))
                    .collect();
                match raw.kind {
                    abi::EV_EXEC => writeln!(
                        out,
                        "{time} exec  {:>7} {} {}  uid {} exec_id {} parent {}{}{}",
                        e.pid,
                        e.binary,
                        shell_words(e.args.as_deref().unwrap_or(&[])),
                        e.uid,
                        e.exec_id,
                        e.parent_exec_id,
                        if chain.is_empty() {
                            String::new()
                        } else {
                            format!("  <- {}", chain.join(" <- "))
                        },
                        if e.flags.is_empty() {
                            String::new()
                        } else {
                            format!("  [{}]", e.flags.join(", "))
                        },
                    )?,
                    abi::EV_OPEN => writeln!(
                        out,
                        "{time} open  {:>7} {} {} {}  exec_id {}",
                        e.pid,
                        e.binary,
                        e.path.as_deref().unwrap_or(""),
                        e.access.unwrap_or(""),
                        e.exec_id
                    )?,
                    abi::EV_CONNECT => writeln!(
                        out,
                        "{time} connect {:>5} {} {} port {}  exec_id {}",
                        e.pid,
                        e.binary,
                        e.remote.as_deref().unwrap_or(""),
                        e.port.unwrap_or(0),
                        e.exec_id
                    )?,
                    _ => writeln!(
                        out,
                        "{time} exit  {:>7} {} {}  exec_id {}",
                        e.pid,
                        e.binary,
                        match e.signal {
                            Some(s) if s > 0 => format!("signal {s}"),
                            _ => format!("code {}", e.exit_code.unwrap_or(0)),
                        },
                        e.exec_id
                    )?,
                }
            }
            if raw.kind == abi::EV_EXIT {
                w.lineage.exited(e.exec_id);
            }
        }
        out.flush()?;
        if done && evs.is_empty() {
            break;
        }
    }
    let st = w.stats()?;
    let hooks: serde_json::Map<String, serde_json::Value> = abi::HOOK_NAMES
        .iter()
        .zip(&st)
        .map(|(n, s)| {
            (
                n.to_string(),
                json!({"seen": s.seen, "matched": s.matched, "events": got.get(n).copied().unwrap_or(0), "lost": s.lost}),
            )
        })
        .collect();
    if c.json {
        writeln!(
            out,
            "{}",
            json!({"final": true, "seconds": t0.elapsed().as_secs_f64(), "hooks": hooks})
        )?;
    } else {
        let parts: Vec<String> = abi::HOOK_NAMES
            .iter()
            .zip(&st)
            .filter(|(n, s)| s.seen > 0 || s.lost > 0 || got.contains_key(*n))
            .map(|(n, s)| {
                format!(
                    "{n}: {} events, {} lost ({} seen)",
                    got.get(n).copied().unwrap_or(0),
                    s.lost,
                    s.seen
                )
            })
            .collect();
        writeln!(
            out,
            "total after {:.1}s: {}",
            t0.elapsed().as_secs_f64(),
            parts.join("; ")
        )?;
    }
    out.flush()?;
    Ok(())
}

/// The guard's events (STATE_ROOT/guard/events.jsonl, written by the
/// enforcer) from the moment watch started, relayed as they are written.
struct GuardTail {
    path: PathBuf,
    f: Option<std::fs::File>,
    ino: u64,
    partial: String,
}

impl GuardTail {
    fn open() -> GuardTail {
        let path = crate::guard::state_dir().join("events.jsonl");
        let mut t = GuardTail {
            path,
            f: None,
            ino: 0,
            partial: String::new(),
        };
        t.reopen(true);
        t
    }
    fn reopen(&mut self, at_end: bool) {
        use std::{io::Seek, os::unix::fs::MetadataExt};
        self.f = std::fs::File::open(&self.path).ok().map(|mut f| {
            if at_end {
                let _ = f.seek(std::io::SeekFrom::End(0));
            }
            self.ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
            f
        });
        self.partial.clear();
    }
    fn relay(
        &mut self,
        out: &mut impl Write,
        json_out: bool,
        got: &mut BTreeMap<&'static str, u64>,
    ) -> Result<()> {
        use std::{io::Read, os::unix::fs::MetadataExt};
        // Rotated or created since: read the new file from its start.
        let now = std::fs::metadata(&self.path).map(|m| m.ino()).unwrap_or(0);
        if now != 0 && now != self.ino {
            self.reopen(false);
        }
        let Some(f) = &mut self.f else {
            return Ok(());
        };
        let mut buf = String::new();
        let _ = f.read_to_string(&mut buf);
        self.partial.push_str(&buf);
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
                continue;
            };
            *got.entry("guard").or_default() += 1;
            if json_out {
                let mut v = v;
                v["source"] = json!("guard");
                writeln!(out, "{v}")?;
            } else {
                let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
                writeln!(
                    out,
                    "{} guard {:<4} rule {} {} {:>7} {} {}",
                    s("time"),
                    s("action"),
                    s("rule"),
                    s("event"),
                    v["pid"],
                    s("binary"),
                    v["path"]
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| s("remote"))
                )?;
            }
        }
        Ok(())
    }
}

fn short(b: &str) -> &str {
    b.rsplit('/').next().unwrap_or(b)
}

fn shell_words(a: &[String]) -> String {
    a.iter()
        .skip(1)
        .map(|x| {
            if x.is_empty() || x.contains(|c: char| c.is_whitespace() || "'\"\\$`".contains(c)) {
                format!("{x:?}")
            } else {
                x.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `moat ps [--tree] [--json]`.
pub fn ps(tree: bool, json_out: bool) -> Result<()> {
    sys::require_privileges("moat ps")?;
    // The kernel's table while a guard or a watch keeps one (exact exec
    // ids, and the images an exec without fork replaced); else /proc.
    let (procs, source) = match crate::guard::kernel_procs() {
        Some((gpid, v)) => (v, format!("kernel table (moat guard, pid {gpid})")),
        None => match moat_host::sec::live_table() {
            Some((id, v)) => (
                v,
                format!("kernel table (map id {id}, of a running moat watch or guard test)"),
            ),
            None => (proc_snapshot(), "/proc".to_string()),
        },
    };
    let lineage = lineage_of(&procs);
    if !json_out {
        eprintln!("source: {source}");
    }
    if json_out {
        let mut out = std::io::stdout().lock();
        for p in &procs {
            writeln!(
                out,
                "{}",
                json!({"source": source, "pid": p.pid, "ppid": p.ppid, "exec_id": p.xid, "parent_exec_id": p.parent,
                       "binary": p.binary, "comm": p.comm, "args": p.args, "uid": p.uid, "gid": p.gid,
                       "cwd": cwd_of(p.pid),
                       "ancestors": lineage.ancestors_with(p.parent, 32, p.cgroup, |_| None)})
            )?;
        }
        return Ok(());
    }
    if tree {
        let mut kids: BTreeMap<u32, Vec<&ProcInfo>> = BTreeMap::new();
        for p in &procs {
            kids.entry(p.ppid).or_default().push(p);
        }
        for v in kids.values_mut() {
            v.sort_by_key(|p| p.pid);
        }
        fn walk(
            p: &ProcInfo,
            kids: &BTreeMap<u32, Vec<&ProcInfo>>,
            depth: usize,
            out: &mut impl Write,
        ) -> std::io::Result<()> {
            writeln!(
                out,
                "{:indent$}{} {} {}  [{}]",
                "",
                p.pid,
                p.binary,
                shell_words(&p.args),
                p.xid,
                indent = depth * 2
            )?;
            if depth < 64 {
                for k in kids.get(&p.pid).into_iter().flatten() {
                    if k.pid != p.pid {
                        walk(k, kids, depth + 1, out)?;
                    }
                }
            }
            Ok(())
        }
        let mut out = std::io::stdout().lock();
        let pids: std::collections::HashSet<u32> = procs.iter().map(|p| p.pid).collect();
        let mut roots: Vec<&ProcInfo> = procs
            .iter()
            .filter(|p| !pids.contains(&p.ppid) || p.ppid == p.pid)
            .collect();
        roots.sort_by_key(|p| p.pid);
        for r in roots {
            walk(r, &kids, 0, &mut out)?;
        }
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>7} {:>7} {:>6}  {:<24} {:<28} ARGS",
        "PID", "PPID", "UID", "EXEC ID", "BINARY"
    )?;
    let mut v: Vec<&ProcInfo> = procs.iter().collect();
    v.sort_by_key(|p| p.pid);
    for p in v {
        writeln!(
            out,
            "{:>7} {:>7} {:>6}  {:<24} {:<28} {}",
            p.pid,
            p.ppid,
            p.uid,
            p.xid.to_string(),
            p.binary,
            shell_words(&p.args)
        )?;
    }
    Ok(())
}
