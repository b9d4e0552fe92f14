//! `moat lb check | apply | status | plan | backend | detach`: the
//! operations are moat-host's (`moat_host::lb`); this module renders them.

use std::path::Path;

use anyhow::{Result, anyhow};
use moat_core::{
    counters::human,
    lb::{self as core, State, maglev},
};
use moat_host::{
    lb::{
        apply::{self, ApplyOpts},
        status::{self, LbStatus},
    },
    loader::LogOpts,
};
use serde_json::json;

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// `moat lb check`: validates (no privileges) and prints each backend's share.
pub fn check(path: &Path, json_out: bool) -> Result<()> {
    let cfg = apply::load_config(path)?;
    let mut services = Vec::new();
    for s in &cfg.services {
        let members: Vec<_> = s
            .backends
            .iter()
            .map(|b| (b.id(), b.weight, State::Up))
            .collect();
        let shares = maglev::shares(&core::service_table(&members, cfg.table), members.len());
        services.push((s, shares));
    }
    if json_out {
        println!(
            "{}",
            json!({
                "config": path,
                "ok": true,
                "table": cfg.table,
                "services": services.iter().map(|(s, sh)| json!({
                    "name": s.name,
                    "frontend": s.frontend(),
                    "mode": s.mode.name(),
                    "hash": core::hash_names(s.hash),
                    "health": s.health.as_ref().map(|h| format!("{:?}", h.check)),
                    "backends": s.backends.iter().zip(sh).map(|(b, n)| json!({
                        "address": b.id().to_string(),
                        "weight": b.weight,
                        "slots": n,
                        "share": *n as f64 / cfg.table as f64,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    println!(
        "{}: ok ({} services, Maglev table {})",
        path.display(),
        cfg.services.len(),
        cfg.table
    );
    for (s, sh) in &services {
        println!(
            "  {} {} {} hash [{}]{}",
            s.name,
            s.frontend(),
            s.mode.name(),
            core::hash_names(s.hash).join(", "),
            match &s.health {
                Some(h) => format!(
                    ", health {} every {}ms",
                    match &h.check {
                        core::Check::Tcp { port } => format!("tcp {port}"),
                        core::Check::Http { port, path, expect } =>
                            format!("http {port}{path} = {expect}"),
                    },
                    h.interval_ms
                ),
                None => String::new(),
            }
        );
        for (b, n) in s.backends.iter().zip(sh) {
            println!(
                "    {:<28} weight {:<5} {:>6} slots  {:>6}",
                b.id().to_string(),
                b.weight,
                n,
                pct(*n as f64 / cfg.table as f64)
            );
        }
    }
    Ok(())
}

pub fn apply(o: &ApplyOpts, log: &LogOpts) -> Result<()> {
    let paths = status::paths();
    let bytes = moat_host::source::read_regular(&o.config).ok();
    let r = apply::apply_at(&paths, o, log)?;
    if let Some(bytes) = bytes
        && let Err(e) = moat_host::source::record(&paths, &o.config, &bytes, r.generation, "cli")
    {
        eprintln!("warning: recording the applied file: {e:#}");
    }
    crate::daemon::note_cli_apply(crate::daemon::Family::Lb, &o.config);
    println!(
        "applied {} (generation {}): {} services, {} backends on {} in {:.0?} (prog id {})",
        o.config.display(),
        r.generation,
        r.services,
        r.backends,
        r.interfaces.join(", "),
        r.total,
        r.program_id
    );
    for n in &r.notes {
        println!("note: {n}");
    }
    Ok(())
}

pub fn backend(service: &str, address: &str, to: &str, log: &LogOpts) -> Result<()> {
    let to = State::parse(to).ok_or_else(|| anyhow!("{to:?}: give up, down or drain"))?;
    let (id, was, r) = apply::set_backend(&status::paths(), service, address, to, log)?;
    println!(
        "{service} {id}: {} -> {} (generation {}; its connections stay, new ones {})",
        was.name(),
        to.name(),
        r.generation,
        if to == State::Up {
            "may go to it"
        } else {
            "go elsewhere"
        }
    );
    Ok(())
}

pub fn plan(path: &Path, json_out: bool) -> Result<()> {
    let (m_old, m_new, p) = apply::plan_at(&status::paths(), path)?;
    if json_out {
        println!(
            "{}",
            json!({"config": path, "table_now": m_old, "table_new": m_new, "services": p})
        );
        return Ok(());
    }
    println!(
        "plan for {} (Maglev table {} -> {}):",
        path.display(),
        m_old,
        m_new
    );
    for s in &p {
        println!(
            "  {} {} ({}): {} of new connections would go elsewhere; {} of {} tracked connections move",
            s.service,
            s.frontend,
            s.change,
            pct(s.table_moved),
            s.connections_moved,
            s.connections
        );
        if !s.backends_added.is_empty() {
            println!("    + {}", s.backends_added.join(", "));
        }
        if !s.backends_removed.is_empty() {
            println!("    - {}", s.backends_removed.join(", "));
        }
    }
    Ok(())
}

pub fn status(json_out: bool) -> Result<()> {
    let s: LbStatus = status::status_at(&status::paths())?;
    if json_out {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    if !s.running {
        println!("load balancer: not running");
        return Ok(());
    }
    println!(
        "load balancer: generation {}, Maglev table {}, on {}",
        s.generation,
        s.table,
        s.interfaces.join(", ")
    );
    println!(
        "connections: {} tracked (table of {})",
        s.conntrack_entries, s.conntrack_max
    );
    for svc in &s.services {
        println!(
            "{} {} {} hash [{}]: {} packets, {}, {} connections",
            svc.name,
            svc.frontend,
            svc.mode,
            svc.hash.join(", "),
            svc.packets,
            human(svc.bytes as f64, "B"),
            svc.connections
        );
        for b in &svc.backends {
            println!(
                "  {:<28} {:<5} weight {:<5} share {:>6}  {:>9} packets {:>10}  {:>6} conns ({} total)",
                b.address,
                b.state,
                b.weight,
                pct(b.share),
                b.packets,
                human(b.bytes as f64, "B"),
                b.connections,
                b.connections_total
            );
        }
    }
    let shown: Vec<String> = s
        .reasons
        .iter()
        .filter(|(_, p, _)| *p > 0)
        .map(|(n, p, _)| format!("{n} {p}"))
        .collect();
    println!("packets: {}", shown.join(", "));
    Ok(())
}

pub fn detach() -> Result<()> {
    let said = apply::detach_at(&status::paths())?;
    if said.is_empty() {
        println!("load balancer: nothing to detach");
    } else {
        println!("load balancer detached from {}", said.join(", "));
    }
    Ok(())
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition of the load balancer's state and counters.
pub fn metrics_text(st: &LbStatus) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let family = |s: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    type Pick = fn(&status::BackendStatus) -> f64;
    let per_backend: [(&str, &str, &str, Pick); 7] = [
        (
            "moat_lb_packets_total",
            "counter",
            "Packets balanced to each backend (client to backend).",
            |b| b.packets as f64,
        ),
        (
            "moat_lb_bytes_total",
            "counter",
            "Bytes (whole frames) balanced to each backend.",
            |b| b.bytes as f64,
        ),
        (
            "moat_lb_connections",
            "gauge",
            "Tracked connections of each backend now.",
            |b| b.connections as f64,
        ),
        (
            "moat_lb_connections_total",
            "counter",
            "New connections given to each backend.",
            |b| b.connections_total as f64,
        ),
        (
            "moat_lb_backend_up",
            "gauge",
            "1 if the backend takes new connections (state up, weight > 0).",
            |b| f64::from(u8::from(b.state == "up" && b.weight > 0)),
        ),
        (
            "moat_lb_backend_weight",
            "gauge",
            "The backend's weight.",
            |b| b.weight as f64,
        ),
        (
            "moat_lb_table_share_ratio",
            "gauge",
            "The backend's share of its service's Maglev table.",
            |b| b.share,
        ),
    ];
    for (name, kind, help, pick) in per_backend {
        family(&mut s, name, kind, help);
        for svc in &st.services {
            for b in &svc.backends {
                let _ = writeln!(
                    s,
                    "{name}{{service=\"{}\",backend=\"{}\",state=\"{}\"}} {}",
                    label(&svc.name),
                    label(&b.address),
                    b.state,
                    pick(b)
                );
            }
        }
    }
    family(
        &mut s,
        "moat_lb_decisions_total",
        "counter",
        "Packets the balancer handled, by reason.",
    );
    for (n, p, _) in &st.reasons {
        let _ = writeln!(s, "moat_lb_decisions_total{{reason=\"{n}\"}} {p}");
    }
    family(
        &mut s,
        "moat_lb_conntrack_entries",
        "gauge",
        "Entries in the balancer's connection table.",
    );
    let _ = writeln!(s, "moat_lb_conntrack_entries {}", st.conntrack_entries);
    family(
        &mut s,
        "moat_lb_conntrack_max",
        "gauge",
        "Capacity of the balancer's connection table.",
    );
    let _ = writeln!(s, "moat_lb_conntrack_max {}", st.conntrack_max);
    family(
        &mut s,
        "moat_lb_generation",
        "gauge",
        "Generation of the running balancer config.",
    );
    let _ = writeln!(s, "moat_lb_generation {}", st.generation);
    s
}
