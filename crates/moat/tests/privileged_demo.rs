//! `moat demo` end to end: it must show traffic of every kind it promises
//! and leave no namespace, program or pin behind, also when interrupted.

mod common;

use std::time::Duration;

use common::{MoatProc, moat_pins, prog_id, prog_loaded};
use serde_json::Value;

fn demo_namespaces(pid: u32) -> Vec<String> {
    moat_host::netlab::ip(&["netns", "list"])
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(&format!("moat-demo{pid}-")))
        .map(String::from)
        .collect()
}

#[test]
fn demo_shows_every_kind_and_cleans_up() {
    if !common::privileged("demo_shows_every_kind_and_cleans_up") {
        return;
    }
    let m = MoatProc::spawn(&["demo", "--duration", "2", "--json"]);
    let pid = m.child.id();
    let (ok, stdout, stderr) = m.finish();
    assert!(ok, "moat demo failed:\n{stderr}\n{stdout}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines
        .iter()
        .find(|l| l["final"] == true)
        .expect("a final counts line")
        .clone();
    // Second act: the firewall, probed from a; every probe as the policy says.
    let fw = &lines.last().unwrap()["firewall"];
    let probes = fw["probes"].as_array().expect("firewall probes");
    assert_eq!(probes.len(), 4);
    for p in probes {
        assert_eq!(p["passed"], p["expected_pass"], "{p}");
    }
    assert!(fw["reasons"]["drop_default"].as_u64().unwrap() >= 2, "{fw}");
    for class in [
        "ipv4_tcp",
        "ipv4_udp",
        "ipv4_icmp",
        "ipv6_tcp",
        "ipv6_udp",
        "ipv6_icmp",
    ] {
        let n = last["classes"][class]["packets"].as_u64().unwrap();
        assert!(n > 0, "demo traffic must include {class}: {last}");
    }
    // 2 s at 10 rounds/s, 4 UDP datagrams per family per round, all echoed
    // only from b to a: b receives exactly the requests.
    assert_eq!(last["classes"]["ipv4_udp"]["packets"], 80, "{last}");
    assert_eq!(last["classes"]["ipv6_udp"]["packets"], 80, "{last}");
    assert!(
        demo_namespaces(pid).is_empty(),
        "namespaces left: {:?}",
        demo_namespaces(pid)
    );
    assert!(moat_pins().is_empty());
}

#[test]
fn demo_interrupted_cleans_up() {
    if !common::privileged("demo_interrupted_cleans_up") {
        return;
    }
    let mut m = MoatProc::spawn(&["demo", "--duration", "30"]);
    let pid = m.child.id();
    let id = prog_id(&m.wait_stderr("prog id", Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        demo_namespaces(pid).len(),
        2,
        "demo namespaces must exist while it runs"
    );
    m.signal(libc::SIGINT);
    let (ok, _stdout, stderr) = m.finish();
    assert!(ok, "Ctrl-C must end the demo cleanly:\n{stderr}");
    assert!(stderr.contains("cleaned up"), "{stderr}");
    assert!(
        demo_namespaces(pid).is_empty(),
        "namespaces left after SIGINT"
    );
    assert!(!prog_loaded(id), "program left loaded after SIGINT");
}
