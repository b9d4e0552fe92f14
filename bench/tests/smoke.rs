//! The benchmark code runs (tiny sizes, a few milliseconds) so that it cannot
//! rot; the full benchmark is not part of the test suite.

#[test]
fn prog_cost_smoke() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var("MOAT_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("prog_cost_smoke needs root");
        }
        eprintln!("SKIP prog_cost_smoke: needs root");
        return;
    }
    moat::sys::ensure_bpffs().unwrap();
    let pins = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/moat-bench-smoke-{}",
        std::process::id()
    ));
    let o = moat_bench::Opts {
        sizes: vec![1, 10],
        repeat: 1000,
        rounds: 1,
    };
    let samples = moat_bench::prog_cost(&o, &pins, |_| {});
    let _ = std::fs::remove_dir_all(&pins);
    let samples = samples.unwrap();
    // floor + (rules: 2 scenarios + blocklist: 1) x (v4, v6), per size
    assert_eq!(samples.len(), 2 * (1 + 6));
    assert!(samples.iter().all(|s| s.ns > 0.0));
    for s in &samples {
        let want = if s.scenario.contains("established") {
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

/// The live-traffic harness runs end to end for every filter it knows.
#[test]
fn live_smoke() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var("MOAT_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("live_smoke needs root");
        }
        eprintln!("SKIP live_smoke: needs root");
        return;
    }
    use moat_bench::live::{Filter, measure};
    moat::sys::ensure_bpffs().unwrap();
    for (i, f) in [
        Filter::XdpDrop,
        Filter::None,
        Filter::Moat,
        Filter::IptablesLegacy,
        Filter::NftSet,
    ]
    .into_iter()
    .enumerate()
    {
        let tag = format!("ls{}{i}", std::process::id() % 100_000);
        let pps = measure(f, 10, 20_000, &tag).unwrap_or_else(|e| panic!("{}: {e:#}", f.name()));
        assert!(pps > 0.0, "{} dropped nothing", f.name());
    }
}
