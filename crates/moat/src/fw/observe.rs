//! `moat flows`, `moat metrics`, `moat capture`: the firewall's flows, events
//! and counters (read by moat-host's readers) rendered as text, JSON lines,
//! Prometheus text and pcap.

use std::{
    io::Write,
    path::PathBuf,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use moat_abi::{count::CountValue, fw as abi};
use moat_host::{
    fw::{
        observe::{
            Counters, DecodedEvent, Events, Flow, FlowFilter, counters, endpoint, flows,
            iface_names, mono_to_unix_ns, running,
        },
        state::Paths,
    },
    sys,
};

fn flow_line(f: &Flow) -> String {
    format!(
        "{:<5} {:<7} {:<10} {:<6} {:>22} <- {:<30} {:>8} pkts {:>10} B  {:>7.1}s ago  {}{}",
        f.verdict,
        f.direction,
        f.interface,
        f.proto,
        endpoint(f.local, f.local_port),
        endpoint(f.remote, f.remote_port),
        f.packets,
        f.bytes,
        f.last_seen_secs_ago,
        f.rule,
        f.reason
            .or(f.tcp_state)
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    )
}

/// `moat flows`.
pub struct FlowsOpts {
    pub json: bool,
    pub follow: bool,
    pub filter: FlowFilter,
    /// --follow: stop after this long (None: until Ctrl-C).
    pub duration: Option<Duration>,
}

pub fn flows_cmd(o: &FlowsOpts) -> Result<()> {
    sys::require_privileges("moat flows")?;
    let paths = Paths::from_env();
    let lb_paths = moat_host::lb::status::paths();
    let lb_runs = !moat_host::lb::status::links(&lb_paths).is_empty();
    let fw_runs = running(&paths).is_ok();
    if !fw_runs && !lb_runs {
        // The firewall's own message says how to start it.
        running(&paths)?;
    }
    let list: Vec<Flow> = if fw_runs {
        flows(&paths)?
            .into_iter()
            .filter(|f| o.filter.matches(f))
            .collect()
    } else {
        Vec::new()
    };
    for f in &list {
        if o.json {
            println!("{}", serde_json::to_string(f)?);
        } else {
            println!("{}", flow_line(f));
        }
    }
    // Balanced connections (the load balancer), filtered by port and address.
    let balanced: Vec<_> = if lb_runs && o.filter.verdict.is_none() && o.filter.rule.is_none() {
        moat_host::lb::status::balanced(&lb_paths)
            .into_iter()
            .filter(|b| {
                let addr_port = |s: &str| -> Option<(std::net::IpAddr, u16)> {
                    let sa: std::net::SocketAddr = s.parse().ok()?;
                    Some((sa.ip(), sa.port()))
                };
                let ends = [
                    addr_port(&b.client),
                    addr_port(&b.vip),
                    addr_port(&b.backend),
                ];
                o.filter
                    .port
                    .is_none_or(|p| ends.iter().flatten().any(|(_, q)| *q == p))
                    && o.filter
                        .remote
                        .as_ref()
                        .is_none_or(|c| ends[0].is_some_and(|(a, _)| c.contains(a)))
            })
            .collect()
    } else {
        Vec::new()
    };
    for b in &balanced {
        if o.json {
            println!("{}", serde_json::to_string(b)?);
        } else {
            println!(
                "lb    {:<10} {:<4} {:>22} -> {:<24} => {:<24} {:>7.1}s ago{}{}",
                b.service,
                b.proto,
                b.client,
                b.vip,
                b.backend,
                b.last_seen_secs_ago,
                if b.closing { " (closing)" } else { "" },
                if b.backend_live {
                    ""
                } else {
                    " (backend gone)"
                }
            );
        }
    }
    if !o.follow {
        if !o.json {
            println!(
                "{} flows, {} balanced connections",
                list.len(),
                balanced.len()
            );
        }
        return Ok(());
    }
    if !fw_runs {
        bail!("--follow shows the firewall's events; the firewall is not attached");
    }
    // Follow: drop/log events as they come, and flows as they appear.
    let stop = sys::stop_flag()?;
    let state = running(&paths)?;
    let names = iface_names(&state);
    let mut seen: std::collections::HashSet<String> = list.iter().map(flow_id).collect();
    let mut events = Events::open(&paths)?;
    let t0 = Instant::now();
    let mut last_scan = Instant::now();
    while !stop.load(Ordering::Relaxed) && o.duration.is_none_or(|d| t0.elapsed() < d) {
        events.wait(Duration::from_millis(200))?;
        while let Some(e) = events.next() {
            let ev = DecodedEvent::new(&e, &state, &names);
            if !ev.matches(&o.filter) {
                continue;
            }
            if o.json {
                println!("{}", serde_json::to_string(&ev)?);
            } else {
                println!("{}", ev.line());
            }
        }
        if last_scan.elapsed() >= Duration::from_secs(1) {
            last_scan = Instant::now();
            for f in flows(&paths)? {
                if o.filter.matches(&f) && seen.insert(flow_id(&f)) {
                    if o.json {
                        println!("{}", serde_json::to_string(&f)?);
                    } else {
                        println!("{}", flow_line(&f));
                    }
                }
            }
        }
        std::io::stdout().flush()?;
    }
    Ok(())
}

fn flow_id(f: &Flow) -> String {
    format!(
        "{} {} {} {} {} {}",
        f.verdict, f.proto, f.local, f.local_port, f.remote, f.remote_port
    )
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition (format 0.0.4) of the counters.
pub fn metrics_text(c: &Counters) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let family = |s: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    // Packets and bytes of one labelled breakdown, as two counter families.
    let pair = |s: &mut String, prefix: &str, by: &str, rows: Vec<(String, CountValue)>| {
        for (unit, bytes) in [("packets", false), ("bytes", true)] {
            let name = format!("{prefix}_{unit}_total");
            family(
                s,
                &name,
                "counter",
                &format!(
                    "{} {by}.",
                    if bytes {
                        "Bytes (whole frames)"
                    } else {
                        "Packets"
                    }
                ),
            );
            for (labels, v) in &rows {
                let _ = writeln!(
                    s,
                    "{name}{{{labels}}} {}",
                    if bytes { v.bytes } else { v.packets }
                );
            }
        }
    };
    pair(
        &mut s,
        "moat",
        "the firewall decided, by verdict and reason",
        c.reasons
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let (verdict, reason) = abi::STAT_NAMES.get(i)?.split_once('_')?;
                (verdict == "pass" || verdict == "drop")
                    .then(|| (format!("verdict=\"{verdict}\",reason=\"{reason}\""), *v))
            })
            .collect(),
    );
    pair(
        &mut s,
        "moat_interface",
        "by interface, direction and verdict",
        c.ifaces
            .iter()
            .map(|(i, d, v, c)| {
                (
                    format!(
                        "interface=\"{}\",direction=\"{d}\",verdict=\"{v}\"",
                        label(i)
                    ),
                    *c,
                )
            })
            .collect(),
    );
    family(
        &mut s,
        "moat_conntrack_expired_total",
        "counter",
        "Tracked connections forgotten after their idle timeout.",
    );
    let _ = writeln!(
        s,
        "moat_conntrack_expired_total {}",
        c.reasons
            .get(abi::STAT_CT_EXPIRED as usize)
            .map_or(0, |v| v.packets)
    );
    let ct = &c.conntrack;
    for (name, kind, help, v) in [
        (
            "moat_conntrack_entries{table=\"new\"}",
            "gauge",
            "Tracked connections by table (new: not yet seen both ways; assured: seen both ways).",
            ct.new_entries,
        ),
        (
            "moat_conntrack_entries{table=\"assured\"}",
            "",
            "",
            ct.assured_entries,
        ),
        (
            "moat_conntrack_max{table=\"new\"}",
            "gauge",
            "Capacity of each conntrack table (conntrack: max).",
            ct.new_max,
        ),
        (
            "moat_conntrack_max{table=\"assured\"}",
            "",
            "",
            ct.assured_max,
        ),
        (
            "moat_conntrack_admitted_total",
            "counter",
            "Connections admitted and tracked.",
            ct.inserted,
        ),
        (
            "moat_conntrack_assured_total",
            "counter",
            "Connections that saw traffic both ways and moved to the assured table.",
            ct.assured,
        ),
        (
            "moat_conntrack_evicted_total{table=\"new\"}",
            "counter",
            "Entries pushed out of a full table (new: early drops by newer one-sided flows; assured: by other assured connections).",
            ct.evicted_new,
        ),
        (
            "moat_conntrack_evicted_total{table=\"assured\"}",
            "",
            "",
            ct.evicted_assured,
        ),
    ] {
        if !kind.is_empty() {
            family(&mut s, name.split('{').next().unwrap_or(name), kind, help);
        }
        let _ = writeln!(s, "{name} {v}");
    }
    pair(
        &mut s,
        "moat_rule",
        "decided by each rule (rule \"(default)\": the defaults)",
        c.rules
            .iter()
            .map(|(n, d, a, v)| {
                (
                    format!("rule=\"{}\",direction=\"{d}\",action=\"{a}\"", label(n)),
                    *v,
                )
            })
            .collect(),
    );
    family(
        &mut s,
        "moat_events_total",
        "counter",
        "Packets that qualified for an event, by outcome (emitted, sampled_out, rate_limited, lost).",
    );
    for i in [
        abi::EV_EMITTED,
        abi::EV_SAMPLED_OUT,
        abi::EV_RATE_LIMITED,
        abi::EV_LOST,
    ] {
        let _ = writeln!(
            s,
            "moat_events_total{{outcome=\"{}\"}} {}",
            abi::EV_NAMES[i as usize],
            c.events.get(i as usize).unwrap_or(&0)
        );
    }
    family(
        &mut s,
        "moat_events_lost_total",
        "counter",
        "Events lost because the ring buffer was full.",
    );
    let _ = writeln!(
        s,
        "moat_events_lost_total {}",
        c.events.get(abi::EV_LOST as usize).unwrap_or(&0)
    );
    family(
        &mut s,
        "moat_denied_flows_skipped_total",
        "counter",
        "New denied flows not recorded (flow rate limit).",
    );
    let _ = writeln!(
        s,
        "moat_denied_flows_skipped_total {}",
        c.events.get(abi::EV_FLOWS_SKIPPED as usize).unwrap_or(&0)
    );
    family(
        &mut s,
        "moat_conntrack_entries",
        "gauge",
        "Tracked (allowed) connections.",
    );
    let ct = c
        .maps
        .iter()
        .find(|m| m.0 == abi::MAP_CT)
        .map_or(0, |m| m.1);
    let _ = writeln!(s, "moat_conntrack_entries {ct}");
    family(
        &mut s,
        "moat_map_entries",
        "gauge",
        "Entries in each BPF map.",
    );
    for (m, n, _) in &c.maps {
        let _ = writeln!(s, "moat_map_entries{{map=\"{m}\"}} {n}");
    }
    family(
        &mut s,
        "moat_map_capacity",
        "gauge",
        "Capacity (max_entries) of each BPF map.",
    );
    for (m, _, max) in &c.maps {
        let _ = writeln!(s, "moat_map_capacity{{map=\"{m}\"}} {max}");
    }
    family(
        &mut s,
        "moat_map_pressure_ratio",
        "gauge",
        "Fill ratio of each BPF map (entries / capacity).",
    );
    for (m, n, max) in &c.maps {
        let _ = writeln!(
            s,
            "moat_map_pressure_ratio{{map=\"{m}\"}} {}",
            *n as f64 / (*max).max(1) as f64
        );
    }
    family(
        &mut s,
        "moat_policy_generation",
        "gauge",
        "Generation of the running policy.",
    );
    let _ = writeln!(s, "moat_policy_generation {}", c.generation);
    s
}

/// `moat metrics --listen ADDR`: serves /metrics until Ctrl-C (or `duration`),
/// through [`crate::http`] (concurrent, bounded, with timeouts).
pub fn metrics_cmd(listen: &str, duration: Option<Duration>) -> Result<()> {
    sys::require_privileges("moat metrics")?;
    let paths = Paths::from_env();
    let lb_paths = moat_host::lb::status::paths();
    if running(&paths).is_err() && moat_host::lb::status::links(&lb_paths).is_empty() {
        running(&paths)?;
    }
    let stop = sys::stop_flag()?;
    crate::http::serve(
        listen,
        crate::http::Limits::default(),
        duration,
        stop,
        |addr| eprintln!("serving Prometheus metrics on http://{addr}/metrics"),
        move |path| {
            use hyper::StatusCode;
            if path == "/metrics" {
                match families_metrics(&paths, &lb_paths) {
                    Ok(text) => (
                        StatusCode::OK,
                        "text/plain; version=0.0.4; charset=utf-8",
                        text,
                    ),
                    Err(e) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        format!("{e:#}\n"),
                    ),
                }
            } else {
                (StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".into())
            }
        },
    )
}

/// Prometheus text of every family that runs (the firewall's and the load
/// balancer's), for `moat metrics` and the agent's endpoint.
pub fn families_metrics(paths: &Paths, lb_paths: &Paths) -> Result<String> {
    let fw = running(paths).ok().map(|_| counters(paths));
    let lb = (!moat_host::lb::status::links(lb_paths).is_empty())
        .then(|| moat_host::lb::status::status_at(lb_paths));
    let guard = crate::guard::metrics_text();
    let mut text = String::new();
    if let Some(g) = &guard {
        text.push_str(g);
    }
    match (fw, lb) {
        (Some(Err(e)), _) | (_, Some(Err(e))) => return Err(e),
        (None, None) if guard.is_some() => {}
        (None, None) => bail!("neither the firewall, the load balancer nor the guard runs"),
        (fw, lb) => {
            if let Some(Ok(cn)) = fw {
                text.push_str(&metrics_text(&cn));
            }
            if let Some(Ok(st)) = lb {
                text.push_str(&crate::lb::metrics_text(&st));
            }
        }
    }
    Ok(text)
}

/// `moat capture`: writes (sampled) events' frames to a pcap file.
pub struct CaptureOpts {
    pub verdict: Option<String>,
    pub count: Option<u64>,
    pub file: PathBuf,
    pub duration: Option<Duration>,
}

pub fn capture_cmd(o: &CaptureOpts) -> Result<()> {
    sys::require_privileges("moat capture")?;
    if let Some(v) = &o.verdict
        && v != "allow"
        && v != "deny"
    {
        bail!("--verdict must be allow or deny, not {v:?}");
    }
    let paths = Paths::from_env();
    running(&paths)?;
    let mut events = Events::open(&paths)?;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&o.file).with_context(|| format!("creating {}", o.file.display()))?,
    );
    // pcap global header: magic, v2.4, tz 0, sigfigs 0, snaplen, LINKTYPE_ETHERNET.
    out.write_all(&0xa1b2c3d4u32.to_le_bytes())?;
    out.write_all(&2u16.to_le_bytes())?;
    out.write_all(&4u16.to_le_bytes())?;
    out.write_all(&[0u8; 8])?;
    out.write_all(&(abi::EVENT_CAP as u32).to_le_bytes())?;
    out.write_all(&1u32.to_le_bytes())?;
    out.flush()?;
    let stop = sys::stop_flag()?;
    let t0 = Instant::now();
    let mut n = 0u64;
    eprintln!("capturing to {} (Ctrl-C to stop)", o.file.display());
    'outer: while !stop.load(Ordering::Relaxed) && o.duration.is_none_or(|d| t0.elapsed() < d) {
        events.wait(Duration::from_millis(200))?;
        while let Some(e) = events.next() {
            let verdict = if e.kind == abi::EVENT_DROP {
                "deny"
            } else {
                "allow"
            };
            if o.verdict.as_deref().is_some_and(|v| v != verdict) {
                continue;
            }
            let ts = mono_to_unix_ns(e.ts_ns);
            let frame = e.frame();
            out.write_all(&((ts / 1_000_000_000) as u32).to_le_bytes())?;
            out.write_all(&(((ts % 1_000_000_000) / 1000) as u32).to_le_bytes())?;
            out.write_all(&(frame.len() as u32).to_le_bytes())?;
            out.write_all(&e.pkt_len.to_le_bytes())?;
            out.write_all(frame)?;
            n += 1;
            if o.count.is_some_and(|c| n >= c) {
                break 'outer;
            }
        }
        out.flush()?;
    }
    out.flush()?;
    eprintln!("{n} packets written to {}", o.file.display());
    Ok(())
}
