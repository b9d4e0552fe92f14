//! The `moat fw` command line end to end: check (no root), explain (BPF and
//! reference side by side), generic-XDP mode, detaching one interface of two.

mod common;

use std::path::Path;

use common::{FwRoot, MoatProc, policy_file};
use moat_host::netlab::{self, Lab, LabConfig};
use serde_json::Value;

fn example() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/policy.yaml")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn check_reports_a_good_policy_and_every_error_of_a_bad_one() {
    // No root needed.
    let (ok, out, err) = MoatProc::spawn(&["fw", "check", "-f", &example(), "--json"]).finish();
    assert!(ok, "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["rules"], 5);
    assert_eq!(j["addr4_entries"], 6);
    assert!(j["verdict_entries"].as_u64().unwrap() > 0);
    let chk = common::tag("chk");
    let _cleanup = common::PolicyDir(chk.clone());
    let bad = policy_file(
        &chk,
        "rules:\n  - name: a\n    direction: ingress\n    action: allow\n    ports: [\"9-1\"]\n  - name: a\n    direction: egress\n    action: maybe\n",
    );
    let (ok, _, err) = MoatProc::spawn(&["fw", "check", "-f", bad.to_str().unwrap()]).finish();
    assert!(!ok);
    let b = bad.display();
    assert!(
        err.contains(&format!("{b}:5:13: inverted port range")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{b}:6:11: duplicate rule name \"a\"")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{b}:8:13: \"maybe\" is not an action")),
        "{err}"
    );
    assert!(err.contains("3 error(s) in the policy"), "{err}");
}

#[test]
fn explain_shows_bpf_and_reference_verdicts() {
    if !common::privileged("explain_shows_bpf_and_reference_verdicts") {
        return;
    }
    let root = FwRoot::new(&common::tag("expl"));
    let cases: &[(&[&str], &str, Option<&str>)] = &[
        (
            &["tcp 198.51.100.7:40000 -> 10.0.0.1:22"],
            "allow",
            Some("ssh-office"),
        ),
        (&["tcp 203.0.113.7:40000 -> 10.0.0.1:22"], "deny", None),
        (
            &["udp [2001:db8:bad::9]:5353 -> [2001:db8::1]:53"],
            "deny",
            Some("blocklist"),
        ),
        (
            &["icmpv6 2001:db8::5 -> 2001:db8::1 echo-request"],
            "allow",
            Some("ping"),
        ),
        (
            &["--egress", "tcp 10.0.0.1:41000 -> 192.0.2.10:25"],
            "deny",
            Some("no-smtp-out"),
        ),
        (
            &["--egress", "udp 10.0.0.1:41000 -> 192.0.2.10:53"],
            "allow",
            None,
        ),
    ];
    for (args, verdict, rule) in cases {
        let ex = example();
        let mut full = vec!["fw", "explain", "-f", ex.as_str(), "--json"];
        full.extend_from_slice(args);
        let j: Value = serde_json::from_str(&root.ok(&full)).unwrap();
        assert_eq!(j["agree"], true, "{j}");
        assert_eq!(j["bpf"]["verdict"], *verdict, "{j}");
        assert_eq!(j["reference"]["verdict"], *verdict, "{j}");
        assert_eq!(j["bpf"]["rule"].as_str(), *rule, "{j}");
        assert_eq!(j["reference"]["rule"].as_str(), *rule, "{j}");
    }
    // Human form shows both lines.
    let out = root.ok(&[
        "fw",
        "explain",
        "-f",
        &example(),
        "tcp 198.51.100.7:40000 -> 10.0.0.1:22",
    ]);
    assert!(
        out.contains("BPF program (fw_xdp via BPF_PROG_TEST_RUN): allow by rule \"ssh-office\""),
        "{out}"
    );
    assert!(
        out.contains("reference model:") && out.contains("agree"),
        "{out}"
    );
    // A bad packet description is refused plainly.
    let (ok, _, err) = root.moat(&[
        "fw",
        "explain",
        "-f",
        &example(),
        "tcp 1.2.3.4 -> 5.6.7.8:22",
    ]);
    assert!(!ok && err.contains("expected ADDR:PORT"), "{err}");
}

#[test]
fn generic_mode_and_detaching_one_of_two_interfaces() {
    if !common::privileged("generic_mode_and_detaching_one_of_two_interfaces") {
        return;
    }
    let t = common::tag("gen");
    let lab = Lab::create(&t, &LabConfig::default()).unwrap();
    // A second interface in b: a veth pair of its own.
    let (x1, x2) = (format!("x{t}1"), format!("x{t}2"));
    netlab::ip(&[
        "-n", &lab.ns_b, "link", "add", &x1, "type", "veth", "peer", "name", &x2,
    ])
    .unwrap();
    netlab::ip(&["-n", &lab.ns_b, "link", "set", &x1, "up"]).unwrap();
    netlab::ip(&["-n", &lab.ns_b, "link", "set", &x2, "up"]).unwrap();
    let root = FwRoot::new(&t);
    let pol = policy_file(
        &t,
        "default: { ingress: allow, egress: allow }\nrules: []\n",
    );
    root.ok(&[
        "fw",
        "apply",
        "-q",
        "-f",
        pol.to_str().unwrap(),
        "-i",
        &lab.if_b,
        "-i",
        &x1,
        "--netns",
        &lab.ns_b,
        "--mode",
        "skb",
    ]);
    let shows =
        |dev: &str| netlab::ip(&["-n", &lab.ns_b, "-d", "link", "show", "dev", dev]).unwrap();
    assert!(
        shows(&lab.if_b).contains("xdpgeneric"),
        "generic XDP on {}",
        lab.if_b
    );
    assert!(shows(&x1).contains("xdpgeneric"));
    let s = root.status();
    assert_eq!(s["interfaces"].as_array().unwrap().len(), 2, "{s}");
    root.ok(&["fw", "detach", "-i", &x1]);
    assert!(!shows(&x1).contains("xdp"), "detached from {x1}");
    assert!(
        shows(&lab.if_b).contains("xdpgeneric"),
        "{} still protected",
        lab.if_b
    );
    let s = root.status();
    assert_eq!(s["interfaces"].as_array().unwrap().len(), 1, "{s}");
    let (ok, _, err) = root.moat(&["fw", "detach", "-i", &x1]);
    assert!(!ok && err.contains("not attached to"), "{err}");
}
