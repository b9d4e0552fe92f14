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

use crate::{
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
    drop(_servers);
    drop(counter);
    drop(lab);
    eprintln!("cleaned up: counter detached, namespaces removed.");
    if !o.json {
        eprintln!("next: `moat count -i IFACE` on a real interface (see README).");
    }
    Ok(())
}
