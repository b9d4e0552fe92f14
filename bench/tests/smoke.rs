//! The benchmark code runs (tiny sizes, a few milliseconds) so that it cannot
//! rot; the full benchmark is not part of the test suite.

#[test]
fn prog_cost_smoke() {
    if !privileged("prog_cost_smoke") {
        return;
    }
    moat_host::sys::ensure_bpffs().unwrap();
    let pins = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/moat-bench-smoke-{}",
        std::process::id()
    ));
    let o = moat_bench::Opts {
        sizes: vec![1, 10],
        repeat: 1000,
        rounds: 1,
        xdp_filter: true,
    };
    let samples = moat_bench::prog_cost(&o, &pins, |_| {});
    let _ = std::fs::remove_dir_all(&pins);
    let samples = samples.unwrap();
    // floor (repeat and single runs) + xdp-filter v4/v6 + (rules: 3 scenarios
    // + blocklist: 1) x (v4, v6), per size
    assert_eq!(samples.len(), 2 * (2 + 2 + 8));
    assert!(samples.iter().all(|s| s.ns > 0.0));
    for s in &samples {
        let want = if s.scenario.contains("established") || s.scenario.contains("allowed") {
            "pass"
        } else {
            "drop"
        };
        assert_eq!(s.verdict, want, "{}", s.scenario);
    }
    let md = moat_bench::markdown(&samples, &o.sizes, &o);
    assert!(md.contains("| rules v4: new, denied | drop |"), "{md}");
    assert!(md.contains("x** |"), "ratio column: {md}");
    assert!(moat_bench::svg(&samples, &o.sizes).contains("<polyline"));
}

/// The live-traffic harness runs end to end for every filter it compares,
/// interleaved, with the ceiling first and every ratio to it.
#[test]
fn live_smoke() {
    if !privileged("live_smoke") {
        return;
    }
    use moat_bench::live::{Filter, LiveOpts, run_all};
    moat_host::sys::ensure_bpffs().unwrap();
    let o = LiveOpts {
        sizes: vec![1, 20],
        packets: 20_000,
        rounds: 2,
        filters: Filter::ALL.to_vec(),
        max_install_secs: 60.0,
        max_secs: 2.0,
        stop: Default::default(),
    };
    let (res, skipped) = run_all(&o, |_| {}).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(res.len(), Filter::ALL.len() * 2);
    let k = Filter::ALL.len(); // rigs per N, the ceiling first
    for (j, r) in res.iter().enumerate() {
        // The ceiling is measured before each filter and after the last.
        let want = if r.filter == Filter::XdpDrop {
            2 * k
        } else {
            2
        };
        assert_eq!(r.pps.len(), want, "{}", r.filter.name());
        if r.filter != Filter::XdpDrop {
            // Its ratio is to the mean of the ceilings just before and after it.
            let (ceil, i) = (&res[j - j % k].pps, j % k);
            for round in 0..2 {
                let c = (ceil[round * k + i - 1] + ceil[round * k + i]) / 2.0;
                let got = r.ratio[round];
                assert!(
                    (got - r.pps[round] / c).abs() < 1e-9,
                    "{} round {round}",
                    r.filter.name()
                );
            }
        }
        assert!(
            r.pps.iter().all(|&p| p > 0.0),
            "{} N={} dropped nothing",
            r.filter.name(),
            r.n
        );
        if r.filter == Filter::XdpDrop {
            assert!(r.ratio.iter().all(|&x| (x - 1.0).abs() < 1e-9));
        }
    }
    let md = moat_bench::report::live_markdown(&res, &o.sizes);
    for f in Filter::ALL {
        assert!(md.contains(&format!("| {} |", f.name())), "{md}");
    }
    assert!(
        moat_bench::report::live_svg(&res)
            .matches("<polyline")
            .count()
            == Filter::ALL.len()
    );
    let bars = moat_bench::report::bars(&[], &res, None);
    // Live bars are evaluated (the 10k ones need N=10k: not measured here).
    assert!(bars[1].met.is_some() && bars[2].met.is_some(), "{bars:?}");
    assert!(bars[3].met.is_none());
}

/// TCP connections' whole lives through each stateful firewall.
#[test]
fn tcp_life_smoke() {
    if !privileged("tcp_life_smoke") {
        return;
    }
    moat_host::sys::ensure_bpffs().unwrap();
    let r = moat_bench::tcplife::run(50, 1, |_| {}).unwrap();
    assert_eq!(r.len(), moat_bench::tcplife::CONFIGS.len());
    assert!(r.iter().all(|x| x.rate > 0.0), "{r:?}");
    let md = moat_bench::report::life_markdown(&r);
    assert!(
        md.contains("| nftables conntrack |") && md.contains("**1.00x**"),
        "{md}"
    );
}

/// Policy updates: apply times and a few applies under checked traffic.
#[test]
fn updates_smoke() {
    if !privileged("updates_smoke") {
        return;
    }
    moat_host::sys::ensure_bpffs().unwrap();
    let tag = format!("us{}", std::process::id() % 100_000);
    let times = moat_bench::updates::apply_times(&[10], &tag, |_| {}).unwrap();
    assert_eq!(times.len(), 1);
    assert!(times[0].first > 0.0 && times[0].again > 0.0);
    let u = moat_bench::updates::under_traffic(4, 10, &format!("{tag}t")).unwrap();
    assert!(u.exchanged > 0, "traffic ran");
    assert_eq!(u.lost, 0, "{u:?}");
    let md = moat_bench::report::updates_markdown(&times, Some(&u));
    assert!(md.contains("| 10 |") && md.contains("0 lost"), "{md}");
}

fn privileged(name: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("MOAT_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{name} needs root");
    }
    eprintln!("SKIP {name}: needs root");
    false
}

/// The load balancer's benchmark parts run: program cost at every backend
/// count (each scenario redirected, the floor below them), the forwarding
/// rigs of every peer (tiny floods: something reaches the backends through
/// each), HTTP requests through each, and the disruption table.
#[test]
fn lb_smoke() {
    if !privileged("lb_smoke") {
        return;
    }
    moat_host::sys::ensure_bpffs().unwrap();
    let cost = moat_bench::lb::prog_cost(1, |_| {}).unwrap();
    assert_eq!(cost.len(), 4 * moat_bench::lb::COST_SIZES.len());
    for c in &cost {
        assert!(c.ns > 0.0, "{c:?}");
    }
    let floor = cost
        .iter()
        .find(|c| c.scenario.starts_with("xdp-drop"))
        .unwrap()
        .ns;
    assert!(
        cost.iter()
            .filter(|c| c.scenario == "new connection")
            .all(|c| c.ns > floor)
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    let live = moat_bench::lb::live(20_000, 1, &stop, |_| {}).unwrap();
    assert_eq!(
        live.len(),
        moat_bench::lb::LIVE_CONFIGS.len(),
        "every peer installed"
    );
    for r in &live {
        assert!(r.new_flows[0] > 0.0 && r.one_flow[0] > 0.0, "{r:?}");
    }
    let reqs = moat_bench::lb::requests(0.3, 1, |_| {}).unwrap();
    assert!(reqs.iter().all(|(_, v)| v[0] > 0.0), "{reqs:?}");
    let dis = moat_bench::lb::disruption();
    let md = moat_bench::lb::markdown(&live, &cost, &reqs, &dis);
    assert!(md.contains("| moat nat |"), "{md}");
    assert_eq!(moat_bench::lb::bars(&live, &cost, &dis).len(), 3);
}
