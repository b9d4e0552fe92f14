//! `moat status`: one view of every family (what the kernel runs, its
//! generation, the file it came from and who applied it) and of the agent
//! (running or not, what it thinks of each file, health checks).

use anyhow::Result;
use moat_host::{
    fw::state::{Kernel, Paths},
    lb, source, sys,
};
use serde_json::{Value, json};

use crate::daemon::{self, Family};

fn ago(unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(unix);
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn family_view(f: Family) -> Value {
    if f == Family::Guard {
        let st = crate::guard::read_state().filter(|s| crate::guard::is_runner(s.pid));
        return json!({
            "family": f.name(),
            "running": st.is_some(),
            "generation": null,
            "interfaces": [],
            "source": st.as_ref().map(|s| json!({"file": s.file, "sha256": s.sha256,
                "applied_by": format!("enforcer pid {}", s.pid), "applied_unix": s.started_unix})),
            "detail": st.as_ref().map(|s| json!({"rules": s.rules.len(), "pid": s.pid})).unwrap_or(json!({})),
        });
    }
    let p: Paths = f.paths();
    let generation = source::kernel_generation(&p);
    let rec = source::read(&p);
    let in_force = rec
        .as_ref()
        .is_some_and(|r| Some(r.generation) == generation);
    let (interfaces, extra) = match f {
        Family::Fw => {
            let k = Kernel::read(&p, |_| None);
            (
                k.interfaces
                    .iter()
                    .map(|i| i.iface.label())
                    .collect::<Vec<_>>(),
                json!({}),
            )
        }
        Family::Guard => (vec![], json!({})),
        Family::Lb => match lb::status::status_at(&p) {
            Ok(st) if st.running => {
                let backends: Vec<_> = st.services.iter().flat_map(|s| &s.backends).collect();
                let up = backends.iter().filter(|b| b.state == "up").count();
                (
                    st.interfaces.clone(),
                    json!({"services": st.services.len(), "backends": backends.len(), "backends_up": up}),
                )
            }
            _ => (vec![], json!({})),
        },
    };
    json!({
        "family": f.name(),
        "running": generation.is_some(),
        "generation": generation,
        "interfaces": interfaces,
        "source": if in_force { rec.as_ref().map(|r| json!({
            "file": r.file, "sha256": r.sha256, "applied_by": r.by, "applied_unix": r.applied_unix
        })) } else { None },
        "detail": extra,
    })
}

pub fn status(json_out: bool) -> Result<()> {
    sys::require_privileges("moat status")?;
    let fams: Vec<Value> = Family::ALL.iter().map(|f| family_view(*f)).collect();
    let d = daemon::read_daemon_file();
    let dv = match &d {
        None => json!({"running": false}),
        Some((f, alive)) => json!({
            "running": alive, "pid": f.pid, "started_unix": f.started_unix,
            "config_dir": f.config_dir, "netns": f.netns, "metrics": f.metrics,
            "files": f.families, "health": f.health, "updated_unix": f.updated_unix,
        }),
    };
    if json_out {
        println!("{}", json!({"daemon": dv, "families": fams}));
        return Ok(());
    }
    match &d {
        None => println!("daemon         not running (never started here)"),
        Some((f, alive)) => {
            if *alive {
                println!(
                    "daemon         running (pid {}, started {}), config {}{}{}",
                    f.pid,
                    ago(f.started_unix),
                    f.config_dir.display(),
                    f.netns
                        .as_ref()
                        .map(|n| format!(", netns {n}"))
                        .unwrap_or_default(),
                    f.metrics
                        .as_ref()
                        .map(|m| format!(", metrics {m}"))
                        .unwrap_or_default()
                );
            } else {
                println!(
                    "daemon         not running (pid {} last seen {}; what it applied keeps running)",
                    f.pid,
                    ago(f.updated_unix)
                );
            }
        }
    }
    for (f, v) in Family::ALL.iter().zip(&fams) {
        let title = match f {
            Family::Fw => "firewall",
            Family::Lb => "load balancer",
            Family::Guard => "guard",
        };
        if v["running"] != true {
            println!("{title:<14} not running");
        } else if *f == Family::Guard {
            println!(
                "{title:<14} {} rules from {} (enforcer pid {}; moat guard status)",
                v["detail"]["rules"],
                v["source"]["file"].as_str().unwrap_or("?"),
                v["detail"]["pid"]
            );
        } else {
            let ifs: Vec<&str> = v["interfaces"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            let mut line = format!(
                "{title:<14} generation {} on {}",
                v["generation"],
                ifs.join(", ")
            );
            if *f == Family::Lb && v["detail"]["services"].is_number() {
                let n = |k: &str| v["detail"][k].as_u64().unwrap_or(0);
                let plural = |c: u64, w: &str| format!("{c} {w}{}", if c == 1 { "" } else { "s" });
                line.push_str(&format!(
                    ": {}, {} ({} up)",
                    plural(n("services"), "service"),
                    plural(n("backends"), "backend"),
                    n("backends_up")
                ));
            }
            println!("{line}");
            match v["source"].as_object() {
                Some(s) => println!(
                    "{:<14} from {} (sha256 {}), applied by {} {}",
                    "",
                    s["file"].as_str().unwrap_or("?"),
                    &s["sha256"].as_str().unwrap_or("?")
                        [..12.min(s["sha256"].as_str().unwrap_or("").len())],
                    s["applied_by"].as_str().unwrap_or("?"),
                    ago(s["applied_unix"].as_u64().unwrap_or(0))
                ),
                None => println!(
                    "{:<14} source unknown (no record for this generation: applied by an older moat, or /run was cleared)",
                    ""
                ),
            }
        }
        if let Some((df, _)) = &d
            && let Some(s) = df.families.get(f)
        {
            let what = match s.status.as_str() {
                "in force" if s.adopted => "in force (adopted at start)".to_string(),
                "refused" | "failed" => format!(
                    "{} {}: {}",
                    s.status.to_uppercase(),
                    ago(s.changed_unix),
                    s.error
                        .as_deref()
                        .unwrap_or("")
                        .replace('\n', "\n                ")
                ),
                other => other.to_string(),
            };
            println!("{:<14} daemon: {} {what}", "", s.file.display());
        }
    }
    if let Some((df, _)) = &d
        && !df.health.is_empty()
    {
        println!("health checks");
        for h in &df.health {
            println!(
                "  {:<12} {:<28} {:<6} last {:<24} ok {} fail {} timeout {} transitions {}",
                h.service,
                h.backend,
                h.state,
                h.last.as_deref().unwrap_or("-"),
                h.checks_ok,
                h.checks_fail,
                h.checks_timeout,
                h.transitions
            );
        }
    }
    Ok(())
}
