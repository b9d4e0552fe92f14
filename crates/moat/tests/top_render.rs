//! `moat top` rendered into ratatui's test backend (80x24) from known
//! counters and flows, checked cell by cell for the key figures; and its
//! refusal to run without a terminal.

use moat::fw::top::{Show, SortBy, model, render};
use moat_abi::{count::CountValue, fw as abi};
use moat_host::fw::observe::{Counters, Flow};
use ratatui::{Terminal, backend::TestBackend};

fn cv(packets: u64, bytes: u64) -> CountValue {
    CountValue { packets, bytes }
}

fn flow(verdict: &'static str, remote: &str, packets: u64, bytes: u64) -> Flow {
    Flow {
        verdict,
        direction: "ingress",
        interface: "eth0".into(),
        proto: "tcp".into(),
        local: "10.0.0.1".parse().unwrap(),
        local_port: 443,
        remote: remote.parse().unwrap(),
        remote_port: 50000,
        packets,
        bytes,
        first_seen_secs_ago: 3.0,
        last_seen_secs_ago: 1.0,
        rule: "web".into(),
        reason: None,
        tcp_state: None,
    }
}

fn counters(scale: u64) -> Counters {
    let mut reasons = vec![CountValue::default(); abi::STAT_MAX as usize];
    reasons[abi::STAT_PASS_ESTABLISHED as usize] = cv(1000 * scale, 1_500_000 * scale);
    reasons[abi::STAT_DROP_DEFAULT as usize] = cv(40 * scale, 2400 * scale);
    Counters {
        generation: 7,
        reasons,
        rules: vec![
            (
                "(default)".into(),
                String::new(),
                String::new(),
                cv(40 * scale, 2400 * scale),
            ),
            (
                "web".into(),
                "ingress".into(),
                "allow".into(),
                cv(1000 * scale, 1_500_000 * scale),
            ),
        ],
        events: vec![50, 12, 3, 30, 5, 0, 0],
        maps: vec![(abi::MAP_CT, 17, 262_144)],
        conntrack: Default::default(),
        ifaces: vec![
            (
                "eth0".into(),
                "ingress",
                "pass",
                cv(600 * scale, 900_000 * scale),
            ),
            (
                "eth0".into(),
                "ingress",
                "drop",
                cv(40 * scale, 2400 * scale),
            ),
            (
                "eth0".into(),
                "egress",
                "pass",
                cv(400 * scale, 600_000 * scale),
            ),
            ("eth0".into(), "egress", "drop", cv(0, 0)),
        ],
    }
}

fn screen(sort: SortBy, show: Show) -> Vec<String> {
    let flows = vec![
        flow("allow", "192.0.2.10", 900, 1_200_000),
        flow("allow", "192.0.2.20", 950, 90_000),
        flow("deny", "203.0.113.5", 33, 1980),
        flow("deny", "203.0.113.6", 7, 420),
    ];
    // Two snapshots 2 s apart: rates are the differences / 2.
    let m = model(&counters(1), &counters(3), &flows, 2.0, sort, show);
    let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
    t.draw(|f| render(f, &m)).unwrap();
    let buf = t.backend().buffer().clone();
    (0..24)
        .map(|y| {
            (0..80)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
        })
        .collect()
}

fn row<'a>(s: &'a [String], needle: &str) -> &'a str {
    s.iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}:\n{}", s.join("\n")))
}

#[test]
fn top_shows_rates_rules_talkers_and_denied_sources() {
    let s = screen(SortBy::Bytes, Show::All);
    assert!(s[0].starts_with("moat top  gen 7  2.0s"), "{}", s[0]);
    // pass_established: (3000 - 1000) / 2 s = 1000 pps, total 3000; bits/s:
    // (4.5M - 1.5M) B / 2 s * 8 = 12 Mb/s.
    let est = row(&s, "pass_established");
    assert!(
        est.contains("1000") && est.contains("12.0M") && est.contains("3000"),
        "{est}"
    );
    let drop = row(&s, "drop_default");
    assert!(drop.contains(" 40 ") && drop.contains("120"), "{drop}");
    // Rules: web 1000 pps, 3000 hits.
    let web = row(&s, "web ");
    assert!(
        web.contains("allow") && web.contains("1000") && web.contains("3000"),
        "{web}"
    );
    // Talkers by bytes: 192.0.2.10 (1.2M) before 192.0.2.20.
    let a = s.iter().position(|l| l.contains("192.0.2.10")).unwrap();
    let b = s.iter().position(|l| l.contains("192.0.2.20")).unwrap();
    assert!(a < b);
    assert!(s[a].contains("900") && s[a].contains("1.2M"), "{}", s[a]);
    // Denied sources, most drops first, with their counts.
    let d5 = s.iter().position(|l| l.contains("203.0.113.5")).unwrap();
    let d6 = s.iter().position(|l| l.contains("203.0.113.6")).unwrap();
    assert!(d5 < d6);
    assert!(
        s[d5].trim_end_matches('│').trim_end().ends_with("33"),
        "{}",
        s[d5]
    );
    assert!(
        s[d6].trim_end_matches('│').trim_end().ends_with(" 7"),
        "{}",
        s[d6]
    );
    // Footer: conntrack fill and event outcomes.
    let foot = &s[23];
    assert!(
        foot.contains("ct 17/262144")
            && foot.contains("events: 12 sent, 3 sampled out, 30 limited, 5 lost"),
        "{foot}"
    );
    // Interfaces: eth0 in pass (1800 - 600) / 2 = 600 pps, (2.7M - 0.9M) B / 2 s * 8 = 7.2 Mb/s.
    let inp = row(&s, "eth0 in pass");
    assert!(
        inp.contains("600") && inp.contains("7.2M") && inp.contains("1800"),
        "{inp}"
    );
    let indrop = row(&s, "eth0 in drop");
    assert!(
        indrop.contains(" 40 ") && indrop.contains("120"),
        "{indrop}"
    );
    assert!(
        !s.iter().any(|l| l.contains("eth0 out drop")),
        "idle rows are hidden"
    );
}

#[test]
fn top_keys_change_sort_and_view() {
    let s = screen(SortBy::Packets, Show::All);
    assert!(s[0].contains("[s]ort:pkts"));
    // By packets: 192.0.2.20 (950) before 192.0.2.10 (900).
    let a = s.iter().position(|l| l.contains("192.0.2.10")).unwrap();
    let b = s.iter().position(|l| l.contains("192.0.2.20")).unwrap();
    assert!(b < a);
    let s = screen(SortBy::Bytes, Show::Denied);
    assert!(s[0].contains("[v]iew:deny"));
    let talkers: Vec<&String> = s.iter().filter(|l| l.contains("192.0.2.")).collect();
    assert!(talkers.is_empty(), "allowed flows hidden in the deny view");
}

#[test]
fn top_without_a_terminal_says_so_and_fails() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("top")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("moat top needs a terminal"), "{err}");
}
