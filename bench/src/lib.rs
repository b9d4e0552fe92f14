//! moat's benchmarks. Today: the firewall program's cost per packet through
//! BPF_PROG_TEST_RUN (kernel-measured, repeat R, median of K rounds) as the
//! rule count N grows, next to a trivial XDP drop program (the floor).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context, Result, anyhow};
use aya::{TestRun, TestRunOptions, programs::Xdp};
use moat_core::fw::{Action, Cidr, Dir, Policy, Proto, Rule, compile::compile, frame_between};
use moat_host::{
    fw::instance::FwInstance,
    loader::{self, LogOpts},
};

pub mod lb;
pub mod live;
pub mod report;
pub mod sec;
pub mod tcplife;
pub mod updates;
pub mod xdpfilter;

/// One measured configuration.
#[derive(Clone, Debug)]
pub struct Sample {
    pub scenario: &'static str,
    pub n: usize,
    /// Median kernel-measured nanoseconds per packet.
    pub ns: f64,
    /// Min and max over the rounds.
    pub spread: (f64, f64),
    pub verdict: &'static str,
}

pub struct Opts {
    pub sizes: Vec<usize>,
    pub repeat: u32,
    pub rounds: usize,
    /// Also measure xdp-filter's program (needs xdp-tools).
    pub xdp_filter: bool,
}

fn rule(
    name: String,
    action: Action,
    remote: Option<Vec<Cidr>>,
    ports: Option<Vec<(u16, u16)>>,
) -> Rule {
    Rule {
        name,
        direction: Dir::Ingress,
        action,
        remote,
        except: vec![],
        protos: vec![Proto::Tcp],
        ports,
        icmp_types: None,
        log: false,
        line: 1,
    }
}

fn policy(rules: Vec<Rule>) -> Policy {
    Policy {
        source: "bench".into(),
        interfaces: vec![],
        default_ingress: Action::Deny,
        default_egress: Action::Allow,
        rules,
        sets: Default::default(),
        timeouts: Default::default(),
        logging: Default::default(),
    }
}

fn v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0A00_0000u32 + i as u32) // 10.0.0.0/8: up to 16M
}

fn v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + i as u128)
}

/// N CIDR+proto+port rules: rule i allows tcp port 1000 + i % 60000 from one /32 (or /128).
fn rules_policy(n: usize, six: bool) -> Policy {
    policy(
        (0..n)
            .map(|i| {
                let c = if six {
                    Cidr::new(IpAddr::V6(v6(i)), 128)
                } else {
                    Cidr::new(IpAddr::V4(v4(i)), 32)
                };
                let port = 1000 + (i % 60000) as u16;
                rule(
                    format!("r{i}"),
                    Action::Allow,
                    Some(vec![c]),
                    Some(vec![(port, port)]),
                )
            })
            .collect(),
    )
}

/// A blocklist: a set of N addresses denied both ways whatever the protocol
/// and port (so moat drops it before any conntrack work), plus an allow rule.
fn blocklist_policy(n: usize, six: bool) -> Policy {
    let set: Vec<Cidr> = (0..n)
        .map(|i| {
            if six {
                Cidr::new(IpAddr::V6(v6(i)), 128)
            } else {
                Cidr::new(IpAddr::V4(v4(i)), 32)
            }
        })
        .collect();
    let mut block_in = rule("blocklist-in".into(), Action::Deny, Some(set.clone()), None);
    block_in.protos = vec![Proto::Any];
    let mut block_out = rule("blocklist-out".into(), Action::Deny, Some(set), None);
    block_out.protos = vec![Proto::Any];
    block_out.direction = Dir::Egress;
    policy(vec![
        block_in,
        block_out,
        rule("web".into(), Action::Allow, None, Some(vec![(443, 443)])),
    ])
}

fn local(six: bool) -> IpAddr {
    if six {
        IpAddr::V6(Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Kernel-measured ns/packet of an XDP program on one frame.
/// Kernel-measured ns/packet of one BPF_PROG_TEST_RUN call, and the verdict.
fn run_once(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(f64, u32)> {
    let r = loader::test_run_retrying(|| {
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })
    })
    .context("BPF_PROG_TEST_RUN")?;
    Ok((r.duration.as_nanos() as f64, r.return_value))
}

/// Fastest and slowest round.
/// Median over `frames` of one run each (distinct packets: what repeat
/// cannot measure, such as each packet opening a new connection); the
/// kernel times each run, so this includes its timer's own cost, which the
/// floor measured the same way shows.
fn single_runs(prog: &Xdp, frames: &[Vec<u8>]) -> Result<(f64, u32)> {
    let mut ns = Vec::with_capacity(frames.len());
    let mut ret = 0;
    for f in frames {
        let (t, r) = run_once(prog, f, 1)?;
        ns.push(t);
        ret = r;
    }
    Ok((median(ns), ret))
}

/// Distinct frames opening new connections to `port`.
pub const SINGLE_RUNS: usize = 2000;

fn min_max(runs: &[f64]) -> (f64, f64) {
    (
        runs.iter().copied().fold(f64::MAX, f64::min),
        runs.iter().copied().fold(0.0, f64::max),
    )
}

/// The median round, or with MOAT_BENCH_STAT=min the fastest.
fn stat(runs: &[f64]) -> f64 {
    if std::env::var("MOAT_BENCH_STAT").as_deref() == Ok("min") {
        min_max(runs).0
    } else {
        median(runs.to_vec())
    }
}

/// Kernel-measured ns/packet of an XDP program on one frame over the rounds.
fn measure(prog: &Xdp, frame: &[u8], o: &Opts) -> Result<(f64, (f64, f64), u32)> {
    let mut runs = Vec::new();
    let mut ret = 0;
    for _ in 0..o.rounds {
        let (ns, r) = run_once(prog, frame, o.repeat)?;
        runs.push(ns);
        ret = r;
    }
    Ok((stat(&runs), min_max(&runs), ret))
}

/// One measured configuration, also said as a progress line.
fn sample(
    scenario: &'static str,
    n: usize,
    (ns, spread, ret): (f64, (f64, f64), u32),
    say: &mut impl FnMut(&str),
) -> Sample {
    say(&format!(
        "{scenario:<34} N={n:<8} {ns:>7.1} ns/packet ({})",
        verdict(ret)
    ));
    Sample {
        scenario,
        n,
        ns,
        spread,
        verdict: verdict(ret),
    }
}

fn verdict(ret: u32) -> &'static str {
    match ret {
        1 => "drop",
        2 => "pass",
        _ => "other",
    }
}

/// Runs every scenario at every size; `pins` is a private bpffs directory.
pub fn prog_cost(o: &Opts, pins: &Path, mut say: impl FnMut(&str)) -> Result<Vec<Sample>> {
    let log = LogOpts::default();
    let mut out = Vec::new();

    // The floor: a program that only returns XDP_DROP.
    let mut bpf = loader::open(moat_ebpf::testdata::DROP, &log)?;
    let (floor, _) = loader::load_xdp(&mut bpf, "drop_xdp", &log)?;
    let frame = frame_between(IpAddr::V4(v4(5)), local(false), 6, 40000, 22);
    let (ns, spread, ret) = measure(floor, &frame, o)?;
    for &n in &o.sizes {
        out.push(Sample {
            scenario: "xdp-drop (floor)",
            n,
            ns,
            spread,
            verdict: verdict(ret),
        });
    }
    say(&format!("floor: {ns:.1} ns/packet"));
    let singles: Vec<Vec<u8>> = (0..SINGLE_RUNS)
        .map(|i| frame_between(IpAddr::V4(v4(5)), local(false), 6, 20000 + i as u16, 22))
        .collect();
    let mut floor_single = Vec::new();
    for _ in 0..o.rounds {
        floor_single.push(single_runs(floor, &singles)?.0);
    }
    for &n in &o.sizes {
        out.push(Sample {
            scenario: "xdp-drop (floor), single runs",
            n,
            ns: stat(&floor_single),
            spread: min_max(&floor_single),
            verdict: "drop",
        });
    }

    // The peer: xdp-filter with N listed source addresses, loaded by its own
    // CLI on a lab interface and run on the same packet as moat's blocklist.
    if o.xdp_filter {
        let lab = moat_host::netlab::Lab::create(
            &format!("pc{}", std::process::id() % 100_000),
            &moat_host::netlab::LabConfig {
                addresses: false,
                ipv6: false,
                gro: false,
            },
        )?;
        for &n in o.sizes.iter().filter(|&&n| n <= xdpfilter::MAX_ENTRIES) {
            for six in [false, true] {
                let mut xf = xdpfilter::XdpFilter::load(&lab.ns_b, &lab.if_b)?;
                let srcs: Vec<IpAddr> = (0..n)
                    .map(|i| {
                        if six {
                            IpAddr::V6(v6(i))
                        } else {
                            IpAddr::V4(v4(i))
                        }
                    })
                    .collect();
                xf.deny_sources(&srcs)?;
                let prog = xf.program()?;
                let frame = frame_between(srcs[n / 2], local(six), 6, 40000, 443);
                let (ns, spread, ret) = measure(&prog, &frame, o)?;
                let scenario = if six {
                    "xdp-filter v6: listed, denied"
                } else {
                    "xdp-filter v4: listed, denied"
                };
                out.push(sample(scenario, n, (ns, spread, ret), &mut say));
            }
        }
    }

    // moat: for one rule family and address family, every size is loaded
    // side by side (each with its own conntrack) and the sizes are measured
    // in interleaved rounds (1, 10, ..., 1M, 1, 10, ...), so drift on the
    // machine spreads over all of them instead of favouring some.
    type Build = fn(usize, bool) -> Policy;
    let families: [(&str, Build); 2] = [("rules", rules_policy), ("blocklist", blocklist_policy)];
    for (family, build) in families {
        for six in [false, true] {
            let src = |i: usize| {
                if six {
                    IpAddr::V6(v6(i))
                } else {
                    IpAddr::V4(v4(i))
                }
            };
            let fam = if six { "v6" } else { "v4" };
            let mut loaded = Vec::new();
            for &n in &o.sizes {
                let p = build(n, six);
                let c = compile(&p);
                let dir = pins.join(format!("{family}-{fam}-{n}"));
                let mut inst = FwInstance::load(&p, &c, 1, &dir, &log, &mut |_, _, _| {})
                    .map_err(|e| anyhow!("loading {family} N={n}: {e:#}"))?;
                inst.clear_state()?;
                // (scenario, packet): every packet goes through both lookups.
                let cases: Vec<(&'static str, Vec<u8>)> = match family {
                    "rules" => vec![
                        // From rule k's address to a port it does not allow: default deny.
                        (
                            leak(format!("rules {fam}: new, denied")),
                            frame_between(src(n / 2), local(six), 6, 40000, 22),
                        ),
                        // To the port it allows: first run opens the connection, the rest are established.
                        (
                            leak(format!("rules {fam}: established")),
                            frame_between(
                                src(n / 2),
                                local(six),
                                6,
                                40000,
                                1000 + ((n / 2) % 60000) as u16,
                            ),
                        ),
                    ],
                    _ => vec![(
                        leak(format!("blocklist {fam}: listed, denied")),
                        frame_between(src(n / 2), local(six), 6, 40000, 443),
                    )],
                };
                loaded.push((n, inst, cases));
            }
            // runs[size][case]: one duration per round.
            let mut runs: Vec<Vec<Vec<f64>>> = loaded
                .iter()
                .map(|(_, _, cases)| vec![Vec::new(); cases.len()])
                .collect();
            let mut rets: Vec<Vec<u32>> = loaded.iter().map(|(_, _, c)| vec![0; c.len()]).collect();
            // rules: new allowed connections, one single run per distinct packet.
            let mut allowed: Vec<(Vec<f64>, u32)> = vec![(Vec::new(), 0); loaded.len()];
            for _ in 0..o.rounds {
                for (k, (_, inst, cases)) in loaded.iter_mut().enumerate() {
                    for (j, (_, frame)) in cases.iter().enumerate() {
                        let (ns, ret) = run_once(inst.xdp()?, frame, o.repeat)?;
                        runs[k][j].push(ns);
                        rets[k][j] = ret;
                    }
                }
                if family == "rules" {
                    // Interleaved packet by packet (each size's i-th packet in
                    // turn), so what slows the VM for a while slows every size
                    // alike (run size after size, the medians of one report
                    // moved between 411 and 631 ns across sizes).
                    let mut frames = Vec::new();
                    for (n, inst, _) in loaded.iter_mut() {
                        let port = 1000 + ((*n / 2) % 60000) as u16;
                        frames.push(
                            (0..SINGLE_RUNS)
                                .map(|i| {
                                    frame_between(
                                        src(*n / 2),
                                        local(six),
                                        6,
                                        20000 + i as u16,
                                        port,
                                    )
                                })
                                .collect::<Vec<Vec<u8>>>(),
                        );
                        inst.clear_state()?;
                    }
                    let mut ns: Vec<Vec<f64>> = vec![Vec::with_capacity(SINGLE_RUNS); loaded.len()];
                    // (i indexes every size's frames in turn)
                    #[allow(clippy::needless_range_loop)]
                    for i in 0..SINGLE_RUNS {
                        for (k, (_, inst, _)) in loaded.iter_mut().enumerate() {
                            let (t, ret) = run_once(inst.xdp()?, &frames[k][i], 1)?;
                            ns[k].push(t);
                            allowed[k].1 = ret;
                        }
                    }
                    for (k, v) in ns.into_iter().enumerate() {
                        allowed[k].0.push(median(v));
                    }
                }
            }
            for (k, (n, inst, cases)) in loaded.into_iter().enumerate() {
                if family == "rules" {
                    let (r, ret) = std::mem::take(&mut allowed[k]);
                    out.push(sample(
                        leak(format!("rules {fam}: new, allowed (single runs)")),
                        n,
                        (stat(&r), min_max(&r), ret),
                        &mut say,
                    ));
                }
                for (j, (scenario, _)) in cases.iter().enumerate() {
                    let r = std::mem::take(&mut runs[k][j]);
                    out.push(sample(
                        scenario,
                        n,
                        (stat(&r), min_max(&r), rets[k][j]),
                        &mut say,
                    ));
                }
                drop(inst);
            }
            let _ = std::fs::remove_dir_all(pins);
        }
    }
    Ok(out)
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Markdown tables: ns/packet per scenario and N, and the ratio to N = first size.
pub fn markdown(samples: &[Sample], sizes: &[usize], o: &Opts) -> String {
    let mut scenarios: Vec<&str> = Vec::new();
    for s in samples {
        if !scenarios.contains(&s.scenario) {
            scenarios.push(s.scenario);
        }
    }
    let mut md = String::new();
    md.push_str(&format!(
        "Kernel-measured time per packet (BPF_PROG_TEST_RUN, repeat {}, {} rounds), in ns, as median (fastest). \
         moat's sizes are loaded side by side and measured in interleaved rounds, so the last column, \
         the ratio of the medians, compares them under the same conditions (between whole runs this \
         shared VM moves by ±25%).\n\n| scenario | verdict |",
        o.repeat, o.rounds
    ));
    for n in sizes {
        md.push_str(&format!(" N={n} |"));
    }
    md.push_str(&format!(
        " N={} / N={} |\n|---|---|",
        sizes.last().unwrap_or(&0),
        sizes.first().unwrap_or(&0)
    ));
    for _ in sizes {
        md.push_str("---:|");
    }
    md.push_str("---:|\n");
    for sc in &scenarios {
        let row: Vec<Option<&Sample>> = sizes
            .iter()
            .map(|n| samples.iter().find(|s| s.scenario == *sc && s.n == *n))
            .collect();
        let verdict = row.iter().flatten().next().map_or("", |s| s.verdict);
        md.push_str(&format!("| {sc} | {verdict} |"));
        for s in &row {
            match s {
                Some(s) => md.push_str(&format!(" {:.0} ({:.0}) |", s.ns, s.spread.0)),
                None => md.push_str(" — |"),
            }
        }
        let ratio = match (row.first(), row.last()) {
            (Some(Some(a)), Some(Some(b))) if a.ns > 0.0 => b.ns / a.ns,
            _ => f64::NAN,
        };
        if ratio.is_nan() {
            md.push_str(" — |\n");
        } else {
            md.push_str(&format!(" **{ratio:.2}x** |\n"));
        }
    }
    if samples.iter().any(|s| s.scenario.starts_with("xdp-filter"))
        && sizes.iter().any(|&n| n > xdpfilter::MAX_ENTRIES)
    {
        md.push_str(&format!(
            "\n—: not run; xdp-filter's address maps hold at most {} entries.\n",
            xdpfilter::MAX_ENTRIES
        ));
    }
    md
}

/// An SVG line plot: ns/packet against N (log scale), one line per scenario.
pub fn svg(samples: &[Sample], sizes: &[usize]) -> String {
    let mut series: Vec<report::Series> = Vec::new();
    for s in samples {
        if !sizes.contains(&s.n) {
            continue;
        }
        match series.iter_mut().find(|x| x.name == s.scenario) {
            Some(x) => x.points.push((s.n as f64, s.ns)),
            None => series.push(report::Series {
                name: s.scenario.to_string(),
                points: vec![(s.n as f64, s.ns)],
            }),
        }
    }
    report::plot(
        "ns per packet against rules (BPF_PROG_TEST_RUN)",
        "N (rules or set entries, log scale)",
        "ns / packet",
        &series,
        false,
    )
}
