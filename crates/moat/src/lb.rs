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
    let r = apply::apply_at(&status::paths(), o, log)?;
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
