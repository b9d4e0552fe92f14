//! `moat demo`: the first thing to run. Builds a two-namespace lab, attaches
//! the counter, sends bounded traffic of several kinds, shows live counts,
//! and removes everything on exit, Ctrl-C and error.

use std::{
    io::{IsTerminal, Write},
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use moat_core::counters::Report;

use moat_host::{
    count::{Counter, Mode},
    loader::LogOpts,
    netlab::{self, Lab, LabConfig},
    sys,
    traffic::{self, EchoServers, RoundStats},
};

pub struct DemoOpts {
    pub duration: Duration,
    pub json: bool,
}

pub fn run(o: &DemoOpts, log: &LogOpts) -> Result<()> {
    sys::require_privileges("moat demo")?;
    sys::ensure_bpffs()?;
    let stop = sys::stop_flag()?;
    netlab::reap_stale_demos();

    let tag = format!("demo{}", std::process::id());
    // Progress goes to stderr; stdout carries only the tables (or JSON lines).
    let say = |s: String| eprintln!("{s}");
    say(format!(
        "moat demo: creating namespaces moat-{tag}-a and moat-{tag}-b joined by a veth pair"
    ));
    let lab = Lab::create(&tag, &LabConfig::default()).context("creating the demo lab")?;
    say(format!(
        "  {} ({}, {}) in moat-{tag}-a  <->  {} ({}, {}) in moat-{tag}-b",
        lab.if_a,
        netlab::A4,
        netlab::A6,
        lab.if_b,
        netlab::B4,
        netlab::B6
    ));
    let counter = Counter::attach(&lab.if_b, Mode::Native, Some(&lab.ns_b), log)?;
    say(format!("  {}", counter.loaded));
    say(format!(
        "  attached to {} (native XDP): counting every frame that arrives from {}",
        lab.if_b, lab.if_a
    ));

    let b4: IpAddr = netlab::B4.parse()?;
    let b6: IpAddr = netlab::B6.parse()?;
    let _servers = EchoServers::start(&lab.ns_b, &[b4, b6], 7000)?;

    // Client traffic runs in its own thread inside namespace a; bounded in
    // rounds (10 per second) and in time.
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let ns_a = lab.ns_a.clone();
        let done = Arc::clone(&done);
        let stop = Arc::clone(&stop);
        let rounds = (o.duration.as_millis() / 100).max(1) as u16;
        std::thread::spawn(move || -> Result<RoundStats> {
            let _ns = sys::NetnsGuard::enter(&ns_a)?;
            let mut total = RoundStats::default();
            for i in 0..rounds {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for dst in [b4, b6] {
                    let r = traffic::client_round(dst, 7000, i)?;
                    total.tcp_connections += r.tcp_connections;
                    total.udp_datagrams += r.udp_datagrams;
                    total.pings += r.pings;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            done.store(true, Ordering::Relaxed);
            Ok(total)
        })
    };

    say(format!(
        "  sending TCP, UDP and ICMP over IPv4 and IPv6 for {:.0}s (Ctrl-C stops early)\n",
        o.duration.as_secs_f64()
    ));
    let tty = std::io::stdout().is_terminal() && !o.json;
    let start = Instant::now();
    let zero = counter.read()?;
    let mut prev = zero;
    let mut prev_t = start;
    let mut drawn_lines = 0;
    let mut out = std::io::stdout().lock();
    loop {
        let stopped = sys::sleep_unless(&stop, Duration::from_secs(1));
        let now_t = Instant::now();
        let now = counter.read()?;
        let finished = stopped || done.load(Ordering::Relaxed) || client.is_finished();
        let r = Report {
            interface: format!("{} (moat-{tag}-b)", lab.if_b),
            elapsed: now_t.duration_since(start).as_secs_f64(),
            span: now_t.duration_since(prev_t).as_secs_f64(),
            counts: now.since(&prev),
            final_: false,
        };
        if o.json {
            writeln!(out, "{}", r.to_json())?;
        } else {
            let table = r.to_table();
            if tty && drawn_lines > 0 {
                // Redraw in place: cursor up over the previous table.
                write!(out, "\x1b[{drawn_lines}A\x1b[J")?;
            }
            write!(out, "{table}")?;
            drawn_lines = table.lines().count();
            if !tty {
                writeln!(out)?;
            }
        }
        out.flush()?;
        prev = now;
        prev_t = now_t;
        if finished {
            break;
        }
    }
    let sent = match client.join() {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("the traffic thread panicked"),
    };
    let now = counter.read()?;
    let final_report = Report {
        interface: format!("{} (moat-{tag}-b)", lab.if_b),
        elapsed: start.elapsed().as_secs_f64(),
        span: start.elapsed().as_secs_f64(),
        counts: now.since(&zero),
        final_: true,
    };
    if o.json {
        writeln!(out, "{}", final_report.to_json())?;
    } else {
        writeln!(out, "\n{}", final_report.to_table())?;
        writeln!(
            out,
            "sent from {}: {} TCP connections, {} UDP datagrams, {} ICMP echo requests \
             (half IPv4, half IPv6);\nthe kernel adds handshakes, ACKs, ARP and neighbour discovery.",
            lab.if_a, sent.tcp_connections, sent.udp_datagrams, sent.pings
        )?;
    }
    drop(out);
    drop(counter);
    if !stop.load(Ordering::Relaxed) {
        firewall_phase(&lab, o.json, log)?;
    }
    drop(_servers);
    drop(lab);
    eprintln!("cleaned up: programs detached, namespaces removed.");
    if !o.json {
        eprintln!(
            "next: `moat count -i IFACE`, `moat fw check -f examples/policy.yaml` (see README)."
        );
    }
    Ok(())
}

/// The policy the demo applies to b: default-deny ingress, TCP 7000 and ping allowed.
pub const DEMO_POLICY: &str = "\
default: { ingress: deny, egress: allow }
rules:
  - name: web
    direction: ingress
    action: allow
    proto: tcp
    ports: [7000]
  - name: ping
    direction: ingress
    action: allow
    proto: [icmp, icmpv6]
    icmp_types: [echo-request]
";

/// Second act: the firewall on b's interface (private instance: no pins,
/// detached when it ends), probed from a.
fn firewall_phase(lab: &Lab, json: bool, log: &LogOpts) -> Result<()> {
    use aya::programs::{TcAttachType, XdpMode};
    use moat_core::fw::{compile, policy};
    use moat_host::fw::instance::FwInstance;

    let p = policy::parse(DEMO_POLICY, std::path::Path::new("demo-policy.yaml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let c = compile::compile(&p);
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/moat-demo{}", std::process::id()));
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(pins.clone());
    let mut inst = FwInstance::load(&p, &c, 1, &pins, log, &mut |_, _, _| {})?;
    sys::in_netns(Some(&lab.ns_b), || {
        inst.xdp()?.attach(&lab.if_b, XdpMode::Driver)?;
        inst.tc()?.attach(&lab.if_b, TcAttachType::Egress)?;
        Ok(())
    })?;
    if !json {
        println!(
            "\nfirewall: applied to {} (XDP ingress + TCX egress):\n{}",
            lab.if_b,
            DEMO_POLICY.trim_end()
        );
        println!("probing from {}:", lab.if_a);
    }
    let b4: IpAddr = netlab::B4.parse()?;
    let b6: IpAddr = netlab::B6.parse()?;
    let ns_a = lab.ns_a.clone();
    let probes = std::thread::spawn(move || -> Result<Vec<(String, bool, bool)>> {
        let _ns = sys::NetnsGuard::enter(&ns_a)?;
        // Passed: connected, or refused by b's stack (a RST came back);
        // dropped: no answer at all.
        let tcp = |dst: IpAddr, port: u16| match std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::new(dst, port),
            Duration::from_millis(500),
        ) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        };
        let mut out = Vec::new();
        for dst in [b4, b6] {
            out.push((format!("tcp {dst} port 7000"), true, tcp(dst, 7000)));
            out.push((format!("tcp {dst} port 7002"), false, tcp(dst, 7002)));
        }
        Ok(out)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
    let stats = inst.stats()?;
    let names = moat_abi::fw::STAT_NAMES;
    let mut ok = true;
    for (what, expect, got) in &probes {
        ok &= expect == got;
        if !json {
            println!(
                "  {what:<28} {:<8} (expected {}){}",
                if *got { "passed" } else { "dropped" },
                if *expect { "passed" } else { "dropped" },
                if expect == got { "" } else { "  MISMATCH" }
            );
        }
    }
    if json {
        let probes: Vec<serde_json::Value> = probes
            .iter()
            .map(|(w, e, g)| serde_json::json!({ "probe": w, "expected_pass": e, "passed": g }))
            .collect();
        let reasons: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .zip(&stats)
            .enumerate()
            .filter(|(i, (_, v))| moat_abi::fw::stat_is_verdict(*i as u32) && v.packets > 0)
            .map(|(_, nv)| nv)
            .map(|(n, v)| ((*n).to_string(), v.packets.into()))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "firewall": { "probes": probes, "reasons": reasons } })
        );
    } else {
        let summary: Vec<String> = names
            .iter()
            .zip(&stats)
            .enumerate()
            .filter(|(i, (_, v))| moat_abi::fw::stat_is_verdict(*i as u32) && v.packets > 0)
            .map(|(_, nv)| nv)
            .map(|(n, v)| format!("{n} {}", v.packets))
            .collect();
        println!("firewall counters: {}", summary.join(", "));
    }
    if !ok {
        anyhow::bail!("the firewall did not behave as its policy says");
    }
    Ok(())
}
