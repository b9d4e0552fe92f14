use std::path::Path;

use super::*;

const GOOD: &str = "\
interfaces: [eth0]
maglev: { table: 65537 }
conntrack: { max: 1000000, udp_idle: 30s }
services:
  - name: web
    vip: 10.200.0.10
    port: 80
    proto: tcp
    mode: nat
    hash: [src, sport]
    backends:
      - { address: 10.0.1.11, weight: 2 }
      - { address: 10.0.1.12, port: 8080 }
    health: { tcp: 80, interval: 1s, timeout: 300ms, fall: 3, rise: 2 }
  - name: dns6
    vip: \"fd00:200::53\"
    proto: udp
    mode: dsr
    backends: [\"fd00:1::11\", \"fd00:1::12\"]
    health: { http: { port: 8080, path: /healthz, expect: 204 } }
";

fn errs(text: &str) -> Vec<String> {
    match parse(text, Path::new("lb.yaml")) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn the_issue_example_parses() {
    let c = parse(GOOD, Path::new("lb.yaml")).unwrap();
    assert_eq!(c.interfaces, vec!["eth0"]);
    assert_eq!(c.table, 65537);
    assert_eq!(c.ct_max, 1_000_000);
    assert_eq!(c.udp_idle_s, 30);
    let web = &c.services[0];
    assert_eq!(web.port, Some(80));
    assert_eq!(web.proto, 6);
    assert_eq!(web.hash, moat_abi::lb::HASH_SRC | moat_abi::lb::HASH_SPORT);
    assert_eq!(web.backends[0].weight, 2);
    assert_eq!(web.backends[1].port, Some(8080));
    assert_eq!(web.backends[1].weight, 1);
    let h = web.health.as_ref().unwrap();
    assert_eq!(
        (h.interval_ms, h.timeout_ms, h.fall, h.rise),
        (1000, 300, 3, 2)
    );
    let dns = &c.services[1];
    assert_eq!(dns.port, None);
    assert_eq!(dns.mode, Mode::Dsr);
    assert_eq!(dns.hash, HASH_DEFAULT);
    assert_eq!(
        dns.health.as_ref().unwrap().check,
        Check::Http {
            port: 8080,
            path: "/healthz".into(),
            expect: 204
        }
    );
    assert_eq!(dns.frontend(), "[fd00:200::53]:*/udp");
}

#[test]
fn errors_name_line_and_column() {
    let bad = GOOD.replace("port: 8080 }", "port: 8080, wieght: 3 }");
    let e = errs(&bad);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("lb.yaml:13:"), "{e:?}");
    assert!(e[0].contains("unknown key \"wieght\""), "{e:?}");
}

#[test]
fn every_contract_rule_is_checked() {
    let cases: &[(&str, &str, &str)] = &[
        ("table: 65537", "table: 65536", "not prime"),
        ("table: 65537", "table: 101", "too small for service"),
        ("name: web", "name: Web!", "not a valid service name"),
        ("name: dns6", "name: web", "already used"),
        ("mode: nat", "mode: dsr", "cannot remap ports"),
        ("proto: tcp", "proto: icmp", "not a protocol"),
        ("hash: [src, sport]", "hash: [src, src]", "listed twice"),
        (
            "hash: [src, sport]",
            "hash: [src, port]",
            "not a hash field",
        ),
        (
            "address: 10.0.1.11,",
            "address: \"fd00::11\",",
            "not of the VIP's address family",
        ),
        (
            "address: 10.0.1.11,",
            "address: 10.0.1.12, port: 8080,",
            "listed twice",
        ),
        ("weight: 2", "weight: 20000", "a weight"),
        ("vip: 10.200.0.10", "vip: 127.0.0.1", "cannot be a VIP"),
        ("timeout: 300ms", "timeout: 3s", "longer than the interval"),
        ("udp_idle: 30s", "udp_idle: soon", "not a duration"),
        ("path: /healthz", "path: healthz", "not an HTTP path"),
        (
            "fall: 3,",
            "fall: 3, on_down: later,",
            "keep (a down backend",
        ),
        ("fall: 3,", "fall: 3, on_down: reset,", ""),
        ("    port: 80\n", "", ""),
    ];
    for (from, to, want) in cases {
        let text = GOOD.replacen(from, to, 1);
        assert_ne!(text, GOOD, "{from} not in the example");
        let e = errs(&text);
        if want.is_empty() {
            assert!(e.is_empty(), "{from} -> {to}: {e:?}");
            continue;
        }
        assert!(
            e.iter().any(|m| m.contains(want)),
            "{from} -> {to}: expected {want:?}, got {e:?}"
        );
        assert!(e.iter().all(|m| m.starts_with("lb.yaml:")), "{e:?}");
    }
}

#[test]
fn empty_or_cut_short_files_are_refused() {
    assert!(errs("")[0].contains("empty"));
    assert!(errs("interfaces: [eth0]\n")[0].contains("no `services:`"));
    assert!(errs("services: []\n").is_empty());
    assert!(errs("- a\n")[0].contains("must be a mapping"));
    assert!(
        errs("services:\n  - name: x\n    vip: 10.0.0.1\n    proto: tcp\n    backends: []\n")[0]
            .contains("at least one backend")
    );
}

#[test]
fn a_duplicate_frontend_is_refused() {
    let text = GOOD.replace("name: dns6\n    vip: \"fd00:200::53\"\n    proto: udp\n    mode: dsr\n    backends: [\"fd00:1::11\", \"fd00:1::12\"]",
        "name: web2\n    vip: 10.200.0.10\n    port: 80\n    proto: tcp\n    backends: [10.0.1.13]");
    let e = errs(&text);
    assert!(
        e.iter().any(|m| m.contains("already a service on line 5")),
        "{e:?}"
    );
}

#[test]
fn plan_counts_moved_connections_and_share() {
    let ids: Vec<BackendId> = (1..=4)
        .map(|i| BackendId {
            addr: format!("10.0.1.{i}").parse().unwrap(),
            port: 0,
        })
        .collect();
    let view = |n: usize| plan::SvcView {
        name: "web".into(),
        frontend: "10.200.0.10:80/tcp".into(),
        backends: ids[..n].iter().map(|b| (*b, 1, State::Up)).collect(),
    };
    let conns: Vec<(String, BackendId)> =
        (0..100).map(|i| ("web".to_string(), ids[i % 4])).collect();
    let p = plan::plan(&[view(4)], 65537, &[view(3)], 65537, &conns);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].connections, 100);
    assert_eq!(p[0].connections_moved, 25);
    assert_eq!(p[0].backends_removed, vec!["10.0.1.4".to_string()]);
    assert!(
        (p[0].table_moved - 0.25).abs() < 0.02,
        "{}",
        p[0].table_moved
    );
    // Unchanged: nothing moves.
    let p = plan::plan(&[view(4)], 65537, &[view(4)], 65537, &conns);
    assert_eq!(
        (p[0].change, p[0].table_moved, p[0].connections_moved),
        ("unchanged", 0.0, 0)
    );
    // Draining a backend moves its table share, not its connections.
    let mut drained = view(4);
    drained.backends[0].2 = State::Drain;
    let p = plan::plan(&[view(4)], 65537, &[drained], 65537, &conns);
    assert_eq!(p[0].connections_moved, 0);
    assert!((p[0].table_moved - 0.25).abs() < 0.02);
}

#[test]
fn slots_and_states_survive_a_re_encode() {
    let c = parse(GOOD, Path::new("lb.yaml")).unwrap();
    let none = |_: &str, _: BackendId| None;
    let e1 = encode::encode(&c, &c.services, &encode::Running::default(), 1, &none).unwrap();
    assert_eq!(e1.maglev.len(), 2 * 65537);
    // Two services, two echo entries (one per VIP).
    assert_eq!(e1.vips.len(), 4);
    // Run it, mark one backend down, drop another, add one.
    let mut running = encode::Running {
        services: e1.services.clone(),
        backends: e1.backends.clone(),
        table: 65537,
    };
    running.backends[0].1.state = moat_abi::lb::B_DOWN;
    let slot_of = |e: &encode::Encoded, addr: &str| {
        e.backends
            .iter()
            .find(|(_, b)| encode::backend_id(b).addr.to_string() == addr)
            .map(|(s, b)| (*s, b.state))
    };
    let text = GOOD.replace(
        "      - { address: 10.0.1.12, port: 8080 }\n",
        "      - 10.0.1.13\n",
    );
    let c2 = parse(&text, Path::new("lb.yaml")).unwrap();
    let e2 = encode::encode(&c2, &c2.services, &running, 2, &none).unwrap();
    assert_eq!(slot_of(&e2, "10.0.1.11"), Some((0, moat_abi::lb::B_DOWN)));
    let (s13, st13) = slot_of(&e2, "10.0.1.13").unwrap();
    assert_ne!(
        s13, 1,
        "a removed backend's slot is not reused by the same apply"
    );
    assert_eq!(st13, moat_abi::lb::B_UP);
    assert_eq!(e2.drop_backends, vec![1]);
    // The down backend holds no table entry; the other one holds all.
    let web: Vec<u32> = e2.maglev[..65537].to_vec();
    assert!(web.iter().all(|&e| e == s13));
    // Rebuilt from the kernel's view, the services are the same.
    let back = encode::services_of(&running);
    assert_eq!(back[0].name, "web");
    assert_eq!(back[0].backends.len(), 2);
    assert_eq!(back[1].vip, c.services[1].vip);
}
