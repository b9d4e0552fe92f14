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
    // Neither asked: both.
    let (exec, exit) = if !c.exec && !c.exit {
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
        },
        log,
    )?;
    let stop = sys::stop_flag()?;
    eprintln!(
        "attached: {} (tp_btf sched_process_fork/exec/exit; prog ids {}); {} processes from /proc; events: {}{}{}",
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
        [exec.then_some("exec"), exit.then_some("exit")]
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
            .unwrap_or_default()
    );
    let t0 = Instant::now();
    let mut got: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut out = std::io::stdout().lock();
    loop {
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
                    },
                );
            }
            let ancestors = w
                .lineage
                .ancestors_with(e.parent_exec_id, 32, |x| w.kernel_node(x));
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
    let procs = proc_snapshot();
    let lineage = lineage_of(&procs);
    if json_out {
        let mut out = std::io::stdout().lock();
        for p in &procs {
            writeln!(
                out,
                "{}",
                json!({"pid": p.pid, "ppid": p.ppid, "exec_id": p.xid, "parent_exec_id": p.parent,
                       "binary": p.binary, "comm": p.comm, "args": p.args, "uid": p.uid, "gid": p.gid,
                       "cwd": cwd_of(p.pid),
                       "ancestors": lineage.ancestors(p.parent, 32)})
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
