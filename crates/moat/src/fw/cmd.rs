//! `moat fw check | apply | status | explain | detach`: the operations are
//! moat-host's (`moat_host::fw`); this module reads the command line's
//! intent and renders their results as text or JSON.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Result, anyhow, bail};
use moat_abi::fw as abi;
use moat_core::{
    counters::human,
    fw::{encode::RuleId, flowspec::parse_flow},
};
use moat_host::{
    fw::{
        apply::{ApplyReport, apply_at, load_policy_within},
        detach::detach_at,
        explain::explain_at,
        state::Paths,
        status::status_at,
    },
    loader::LogOpts,
    sys,
};
use serde_json::json;

pub use moat_host::fw::apply::ApplyOpts;

/// `moat fw check`: validate and compile, no privileges needed.
pub fn check(path: &Path, json_out: bool, budget: Option<u64>) -> Result<()> {
    let t = Instant::now();
    let (p, c) = load_policy_within(path, budget)?;
    let e = moat_core::fw::encode::Encoded::of(&p, &c);
    if json_out {
        println!(
            "{}",
            json!({
                "policy": path,
                "ok": true,
                "rules": p.rules.len(),
                "classes": c.classes.len(),
                "addr4_entries": c.addr4.len(),
                "addr6_entries": c.addr6.len(),
                "verdict_entries": c.verdicts.len(),
                "maps": e.map_entries().iter().map(|(n, k)| ((*n).to_string(), json!(k))).collect::<serde_json::Map<_, _>>(),
                "memory_bytes": e.memory_bytes(),
                "compile_ms": t.elapsed().as_millis() as u64,
            })
        );
        return Ok(());
    }
    println!(
        "{}: ok ({} rules, compiled in {:.0?})",
        path.display(),
        p.rules.len(),
        t.elapsed()
    );
    println!(
        "default: ingress {}, egress {}",
        p.default_ingress.name(),
        p.default_egress.name()
    );
    if !p.interfaces.is_empty() {
        println!("interfaces: {}", p.interfaces.join(", "));
    }
    println!(
        "\n  id   rule                 dir      action  prefixes  proto                ports/types"
    );
    for (i, r) in p.rules.iter().enumerate() {
        let prefixes = r
            .remote
            .as_ref()
            .map_or("any".to_string(), |v| v.len().to_string());
        let protos: Vec<String> = r
            .protos
            .iter()
            .map(|p| format!("{p:?}").to_lowercase())
            .collect();
        let l4 = match (&r.ports, &r.icmp_types) {
            (Some(ps), _) => ps
                .iter()
                .map(|(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect::<Vec<_>>()
                .join(","),
            (_, Some(ts)) => format!("{} icmp type(s)", ts.len()),
            _ => "all".into(),
        };
        println!(
            "  {:<4} {:<20} {:<8} {:<6} {:>9}  {:<20} {}{}",
            i + 1,
            r.name,
            r.direction.name(),
            r.action.name(),
            prefixes,
            protos.join(","),
            l4,
            if r.except.is_empty() {
                String::new()
            } else {
                format!(" (except {} prefixes)", r.except.len())
            }
        );
    }
    for (name, n) in &p.sets {
        println!("  set @{name}: {n} entries");
    }
    println!("\naddress classes: {} (class 0 = no rule)", c.classes.len());
    for (i, rules) in c.classes.iter().enumerate().skip(1).take(10) {
        let names: Vec<&str> = rules
            .iter()
            .map(|r| p.rules[*r as usize].name.as_str())
            .collect();
        println!("  class {i}: {}", names.join(", "));
    }
    if c.classes.len() > 11 {
        println!("  ... {} more", c.classes.len() - 11);
    }
    println!(
        "map entries (host addresses and single/every-port verdicts in hash maps, the rest in LPM tries):"
    );
    for (n, k) in e.map_entries() {
        println!("  {n:<12} {k:>9}");
    }
    // The fast path (see docs/policy.md): what a packet from anywhere costs.
    let blocks = moat_core::fw::encode::blocked_classes(&p, &c);
    if let Some((class, _)) = &e.dense {
        println!(
            "fast path: class {class} (remotes no listed prefix covers) decided by one read of fw_dense ({} slots)",
            moat_abi::fw::DENSE_SLOTS
        );
    }
    if e.maps2() & moat_abi::fw::HAS2_HOSTBITS != 0 {
        println!(
            "  host addresses behind a bit filter of {} bits",
            e.hostbits_words() * 64
        );
    }
    if !blocks.is_empty() {
        let mut ids: Vec<u32> = blocks.keys().copied().collect();
        ids.sort_unstable();
        println!(
            "  blocklist classes (denied both ways, dropped before conntrack): {}",
            ids.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "kernel memory for the policy maps: about {}",
        human(e.memory_bytes() as f64, "B")
    );
    Ok(())
}

/// Prints progress on stderr (one updating line on a terminal).
fn progress_printer(quiet: bool) -> impl FnMut(&str, usize, usize) {
    let tty = std::io::stderr().is_terminal();
    let mut last = Instant::now();
    move |what: &str, done: usize, total: usize| {
        if quiet || total < 100_000 {
            return;
        }
        if done < total && last.elapsed().as_millis() < 200 {
            return;
        }
        last = Instant::now();
        let pct = done * 100 / total.max(1);
        let bar: String = (0..30)
            .map(|i| if i * 100 / 30 < pct { '#' } else { '.' })
            .collect();
        if tty {
            eprint!("\r  {what:<22} [{bar}] {pct:>3}% {done}/{total}");
            if done == total {
                eprintln!();
            }
        } else if done == total {
            eprintln!("  {what}: {done}/{total}");
        }
    }
}

/// `moat fw apply`: applies, then says what happened.
pub fn apply(o: &ApplyOpts, log: &LogOpts) -> Result<()> {
    let mut progress = progress_printer(o.quiet);
    let paths = Paths::from_env();
    let bytes = moat_host::source::read_regular(&o.policy).ok();
    let r = apply_at(&paths, o, log, &mut progress)?;
    if let Some(bytes) = bytes
        && let Err(e) = moat_host::source::record(&paths, &o.policy, &bytes, r.generation, "cli")
    {
        eprintln!("warning: recording the applied file: {e:#}");
    }
    print_apply(&r);
    crate::daemon::note_cli_apply(crate::daemon::Family::Fw, &o.policy);
    Ok(())
}

fn print_apply(r: &ApplyReport) {
    println!(
        "applied {} (generation {}): {} rules, {} address classes, {} map entries (~{}), default ingress {} / egress {}",
        r.policy.display(),
        r.generation,
        r.rules,
        r.classes,
        r.entries,
        human(r.memory_bytes as f64, "B"),
        r.default_ingress,
        r.default_egress
    );
    println!("interfaces: {}", r.interfaces.join(", "));
    for n in &r.notes {
        println!("  {n}");
    }
    println!(
        "took {:.2?} (compile + load + fill {:.2?}, swap {:.2?}); programs: {}",
        r.total,
        r.fill,
        r.total - r.fill,
        r.programs
            .iter()
            .map(|(n, id)| format!("{n} id {id}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// `moat fw detach [-i IFACE]`.
pub fn detach(interfaces: &[String]) -> Result<()> {
    sys::require_privileges("moat fw detach")?;
    let r = detach_at(&Paths::from_env(), interfaces)?;
    let names = r.detached.join(", ");
    if r.nothing {
        println!("the firewall is not attached");
    } else if r.removed_all && r.detached.is_empty() {
        println!("removed stray firewall pins");
    } else if r.removed_all {
        println!("detached from {names}; firewall removed (programs, links, maps and pins)");
    } else {
        println!("detached from {names}");
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// `moat fw status [--json]`.
pub fn status(json_out: bool) -> Result<()> {
    sys::require_privileges("moat fw status")?;
    let st = status_at(&Paths::from_env())?;
    let Some(counters) = &st.counters else {
        if json_out {
            println!(
                "{}",
                json!({ "attached": false, "state_file": st.state_file })
            );
        } else {
            println!("the firewall is not attached (moat fw apply -f POLICY -i IFACE)");
            if st.state_file != "missing" {
                println!("  (a stale state file is left: {}; ignored)", st.state_file);
            }
        }
        return Ok(());
    };
    let described = &st.described;
    let gens = &st.generations;
    let stats = &counters.reasons;
    let ct = &counters.conntrack;
    let rule_hits: Vec<serde_json::Value> = counters
        .rules
        .iter()
        .enumerate()
        .map(|(i, (name, dir, action, v))| {
            let line = described
                .as_ref()
                .and_then(|s| RuleId(i as u32).rule_index().and_then(|j| s.rules.get(j)))
                .map_or(0, |r| r.line);
            json!({ "id": i, "rule": name, "direction": dir, "action": action, "line": line, "packets": v.packets, "bytes": v.bytes })
        })
        .collect();
    if json_out {
        let reasons: serde_json::Map<String, serde_json::Value> = abi::STAT_NAMES
            .iter()
            .zip(stats)
            .enumerate()
            .filter(|(i, _)| abi::stat_is_verdict(*i as u32))
            .map(|(_, (n, v))| {
                (
                    (*n).to_string(),
                    json!({ "packets": v.packets, "bytes": v.bytes }),
                )
            })
            .collect();
        let maps_json: serde_json::Map<String, serde_json::Value> = counters
            .maps
            .iter()
            .map(|(n, e, m)| ((*n).to_string(), json!({ "entries": e, "max": m })))
            .collect();
        println!(
            "{}",
            json!({
                "attached": st.attached(),
                "generation": st.generation(),
                "generations": gens,
                "state_file": st.state_file,
                "policy": described.as_ref().map(|s| s.policy.clone()),
                "applied_unix": described.as_ref().map(|s| s.applied_unix),
                "default": described.as_ref().map(|s| json!({ "ingress": s.default_ingress, "egress": s.default_egress })),
                "interfaces": st.interfaces.iter().map(|i| json!({ "name": i.iface.name, "netns": i.iface.netns, "mode": i.iface.mode, "linked": i.linked, "generation": i.generation })).collect::<Vec<_>>(),
                "rules": rule_hits,
                "reasons": reasons,
                "conntrack": ct,
                "maps": maps_json,
            })
        );
        return Ok(());
    }
    match described {
        Some(s) => println!(
            "firewall: generation {}, policy {}, default ingress {} / egress {}",
            s.generation,
            s.policy.display(),
            s.default_ingress,
            s.default_egress
        ),
        None => println!(
            "firewall: generation {} (state file {}: policy and rule names unknown)",
            gens.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            st.state_file
        ),
    }
    for i in &st.interfaces {
        println!(
            "  {}{}: XDP ({}) ingress + TCX egress{}{}",
            i.iface.name,
            i.iface
                .netns
                .as_ref()
                .map(|n| format!(" [netns {n}]"))
                .unwrap_or_default(),
            i.iface.mode,
            if gens.len() > 1 {
                format!(
                    ", generation {}",
                    i.generation.map_or("?".into(), |g| g.to_string())
                )
            } else {
                String::new()
            },
            if i.linked {
                ""
            } else {
                "  NOT ATTACHED (defunct or missing link)"
            }
        );
    }
    println!(
        "\n  {:<4} {:<20} {:<8} {:<6} {:>12} {:>12}",
        "id", "rule", "dir", "action", "packets", "bytes"
    );
    for r in &rule_hits {
        println!(
            "  {:<4} {:<20} {:<8} {:<6} {:>12} {:>12}",
            r["id"].as_u64().unwrap_or(0),
            r["rule"].as_str().unwrap_or(""),
            r["direction"].as_str().unwrap_or(""),
            r["action"].as_str().unwrap_or(""),
            r["packets"].as_u64().unwrap_or(0),
            human(r["bytes"].as_u64().unwrap_or(0) as f64, "B")
        );
    }
    println!("\n  {:<18} {:>12} {:>12}", "reason", "packets", "bytes");
    for (_, (n, v)) in abi::STAT_NAMES
        .iter()
        .zip(stats)
        .enumerate()
        .filter(|(i, _)| abi::stat_is_verdict(*i as u32))
    {
        println!(
            "  {:<18} {:>12} {:>12}",
            n,
            v.packets,
            human(v.bytes as f64, "B")
        );
    }
    let fill =
        |n: u64, max: u64| format!("{n}/{max} ({:.1}%)", n as f64 * 100.0 / max.max(1) as f64);
    println!(
        "\n  conntrack: new {}, assured {}; {} admitted, {} assured, {} expired; evicted: {} new (early drops), {} assured",
        fill(ct.new_entries, ct.new_max),
        fill(ct.assured_entries, ct.assured_max),
        ct.inserted,
        ct.assured,
        ct.expired,
        ct.evicted_new,
        ct.evicted_assured
    );
    println!(
        "\n  maps: {}",
        counters
            .maps
            .iter()
            .map(|(n, e, m)| format!("{n} {}", fill(*e, *m)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// What `moat fw explain` is asked.
pub struct ExplainOpts {
    pub policy: Option<PathBuf>,
    pub packet: String,
    pub egress: bool,
    pub json: bool,
}

/// `moat fw explain`: the verdict and deciding rule, from the real BPF
/// program (BPF_PROG_TEST_RUN on a private instance) and from the reference.
pub fn explain(o: &ExplainOpts, log: &LogOpts) -> Result<()> {
    let spec = parse_flow(&o.packet)?;
    let r = explain_at(
        &Paths::from_env(),
        o.policy.as_deref(),
        &spec,
        o.egress,
        log,
    )?;
    let p = &r.policy;
    let dir = r.dir;
    let remote = r.flow.remote;
    let rule_name = |id: Option<usize>| match id {
        None => format!("the {} default", dir.name()),
        Some(i) => format!(
            "rule {:?} ({}:{})",
            p.rules[i].name,
            r.policy_path.display(),
            p.rules[i].line
        ),
    };
    let agree = r.agree();
    let reason = r.bpf_reason;
    if o.json {
        println!(
            "{}",
            json!({
                "packet": o.packet,
                "direction": dir.name(),
                "remote": remote.to_string(),
                "bpf": { "program": r.program, "verdict": if r.bpf_passed { "allow" } else { "deny" },
                         "rule": r.bpf_rule.flatten().map(|i| p.rules[i].name.clone()), "reason": reason, "return_value": r.return_value },
                "reference": { "verdict": r.reference.action.name(), "rule": r.reference.rule.map(|i| p.rules[i].name.clone()) },
                "agree": agree,
            })
        );
    } else {
        println!("{} ({}, remote {remote})", o.packet, dir.name());
        let bpf_label = format!("BPF program ({} via BPF_PROG_TEST_RUN):", r.program);
        let w = bpf_label.len();
        println!(
            "  {bpf_label} {:<5} by {} [{reason}]",
            if r.bpf_passed { "allow" } else { "deny" },
            r.bpf_rule.map_or("an unknown rule".into(), rule_name)
        );
        println!(
            "  {:<w$} {:<5} by {}",
            "reference model:",
            r.reference.action.name(),
            rule_name(r.reference.rule)
        );
        println!(
            "  {}",
            if agree {
                "agree"
            } else {
                "DISAGREE: this is a bug in moat, please report it"
            }
        );
    }
    if !agree {
        bail!("the BPF program and the reference model disagree");
    }
    Ok(())
}

/// Reads a size: `1000000`, `512k`, `256MiB`, `2G` (k/M/G/T are powers of 1024).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("{s:?} is not a size (e.g. 512MiB, 2G, 1000000)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => bail!("{s:?}: unknown size unit {u:?} (use k, M, G or T)"),
    };
    n.checked_mul(mult)
        .ok_or_else(|| anyhow!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}
