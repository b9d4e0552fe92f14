//! Real packets through a veth pair between two namespaces: `moat count`
//! must count exactly what was sent, class by class, and leave nothing behind.

mod common;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use common::{MoatProc, moat_pins, prog_id, prog_loaded};
use moat_abi::count::*;
use moat_core::{classify::classify, packet::*};
use moat_host::netlab::{Lab, LabConfig};
use serde_json::Value;

const A4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const B4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// A quiet lab: no addresses, IPv6 off, so the only frames on the wire are
/// the ones the test sends.
fn quiet_lab(prefix: &str) -> Lab {
    let cfg = LabConfig {
        addresses: false,
        ipv6: false,
        gro: false,
    };
    Lab::create(&common::tag(prefix), &cfg).expect("creating lab")
}

/// Frames of every class, each with its own count and size.
fn traffic(lab: &Lab) -> Vec<Vec<u8>> {
    let e = |ethertype: u16, p: &[u8]| ethernet(lab.mac_b, lab.mac_a, &[], ethertype, p);
    let ips4 = Ips::V4(A4, B4);
    let ips6 = Ips::V6(A6, B6);
    let mut frames = Vec::new();
    let mut add = |n: usize, f: Vec<u8>| frames.extend(std::iter::repeat_n(f, n));
    add(
        37,
        e(
            ETH_P_IP,
            &ipv4(
                A4,
                B4,
                IPPROTO_TCP,
                &tcp(ips4, 40000, 80, TCP_SYN, 1, 0, &[1; 100]),
            ),
        ),
    );
    add(
        23,
        e(
            ETH_P_IP,
            &ipv4(A4, B4, IPPROTO_UDP, &udp(ips4, 40000, 53, &[2; 300])),
        ),
    );
    add(
        11,
        e(
            ETH_P_IP,
            &ipv4(A4, B4, IPPROTO_ICMP, &icmpv4(8, 0, [0, 1, 0, 1], &[3; 56])),
        ),
    );
    add(7, e(ETH_P_IP, &ipv4(A4, B4, IPPROTO_GRE, &[0; 40])));
    // Nine VID-0 tags: deeper than the parser follows.
    add(
        3,
        ethernet(
            lab.mac_b,
            lab.mac_a,
            &[(ETH_P_8021Q, 0); 9],
            ETH_P_IP,
            &ipv4(A4, B4, IPPROTO_UDP, &udp(ips4, 40000, 53, &[5; 20])),
        ),
    );
    add(
        29,
        e(
            ETH_P_IPV6,
            &ipv6(
                A6,
                B6,
                IPPROTO_TCP,
                &tcp(ips6, 40000, 443, TCP_SYN, 1, 0, &[4; 200]),
            ),
        ),
    );
    add(
        19,
        e(
            ETH_P_IPV6,
            &ipv6(
                A6,
                B6,
                IPPROTO_HOPOPTS,
                &ipv6_ext(IPPROTO_UDP, &[], &udp(ips6, 1, 2, &[5; 50])),
            ),
        ),
    );
    add(
        13,
        e(
            ETH_P_IPV6,
            &ipv6(
                A6,
                B6,
                IPPROTO_ICMPV6,
                &icmpv6(A6, B6, 128, 0, [0; 4], &[6; 16]),
            ),
        ),
    );
    add(5, e(ETH_P_IPV6, &ipv6(A6, B6, IPPROTO_ESP, &[0; 24])));
    add(17, e(ETH_P_ARP, &arp_request(lab.mac_a, A4, B4)));
    add(3, e(0x88B5, &[0; 46])); // local experimental ethertype: other
    add(
        9,
        ethernet(
            lab.mac_b,
            lab.mac_a,
            &[(ETH_P_8021Q, 42)],
            ETH_P_IP,
            &ipv4(A4, B4, IPPROTO_UDP, &udp(ips4, 1, 2, &[7; 20])),
        ),
    );
    add(
        6,
        ethernet(
            lab.mac_b,
            lab.mac_a,
            &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2)],
            ETH_P_IPV6,
            &ipv6(A6, B6, IPPROTO_TCP, &tcp(ips6, 1, 2, TCP_ACK, 1, 1, &[])),
        ),
    );
    frames
}

#[test]
fn count_json_totals_equal_what_was_sent() {
    if !common::privileged("count_json_totals_equal_what_was_sent") {
        return;
    }
    let lab = quiet_lab("cnt");
    let mut m = MoatProc::spawn(&[
        "count",
        "-i",
        &lab.if_b,
        "--netns",
        &lab.ns_b,
        "--json",
        "--interval",
        "0.5",
        "--duration",
        "4",
    ]);
    m.wait_stderr("attached to", Duration::from_secs(10));
    // veth switches its receive path to NAPI (where XDP runs) just after the
    // attach returns; frames sent within ~20 ms of it can bypass XDP. Measured
    // here: 20 ms always sufficed; wait 10x that.
    std::thread::sleep(Duration::from_millis(200));
    let frames = traffic(&lab);
    moat_host::traffic::send_frames(&lab.ns_a, &lab.if_a, &frames).expect("sending frames");
    let link_stats = format!(
        "{}\n{}",
        moat_host::netlab::ip(&["-n", &lab.ns_a, "-s", "link", "show", "dev", &lab.if_a])
            .unwrap_or_default(),
        moat_host::netlab::ip(&[
            "-n", &lab.ns_b, "-s", "-d", "link", "show", "dev", &lab.if_b
        ])
        .unwrap_or_default()
    );

    let (ok, stdout, stderr) = m.finish();
    assert!(ok, "moat count failed:\n{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.len() >= 3,
        "expected interval lines and a final line:\n{stdout}"
    );
    let last = lines.last().unwrap();
    assert_eq!(last["final"], true, "last line must be the totals");
    assert!(lines[..lines.len() - 1].iter().all(|l| l["final"] == false));

    let mut want = [(0u64, 0u64); CLASS_MAX as usize];
    for f in &frames {
        let c = classify(f) as usize;
        want[c].0 += 1;
        want[c].1 += f.len() as u64;
    }
    for (c, name) in CLASS_NAMES.iter().enumerate() {
        let got = &last["classes"][name];
        assert_eq!(
            got["packets"], want[c].0,
            "{name} packets; final line: {last}\n{link_stats}\n{stderr}"
        );
        assert_eq!(got["bytes"], want[c].1, "{name} bytes; final line: {last}");
        // The interval lines add up to the same totals.
        let sum: u64 = lines[..lines.len() - 1]
            .iter()
            .map(|l| l["classes"][name]["packets"].as_u64().unwrap())
            .sum();
        assert_eq!(
            sum, want[c].0,
            "{name}: interval lines must add up to the total"
        );
    }
    assert!(
        want.iter().all(|w| w.0 > 0),
        "the traffic must cover every class"
    );
    assert_eq!(last["total"]["packets"], frames.len() as u64);
    drop(lab);
}

#[test]
fn duration_end_leaves_nothing_behind() {
    if !common::privileged("duration_end_leaves_nothing_behind") {
        return;
    }
    let lab = quiet_lab("dur");
    let mut m = MoatProc::spawn(&[
        "count",
        "-i",
        &lab.if_b,
        "--netns",
        &lab.ns_b,
        "--duration",
        "1",
    ]);
    let id = prog_id(&m.wait_stderr("prog id", Duration::from_secs(10)));
    assert!(
        prog_loaded(id),
        "program {id} must be loaded while counting"
    );
    assert!(
        lab.b_has_xdp().unwrap(),
        "XDP must be attached while counting"
    );
    let (ok, stdout, stderr) = m.finish();
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("total since start"),
        "human output ends with totals:\n{stdout}"
    );
    assert!(!prog_loaded(id), "program {id} still loaded after exit");
    assert!(!lab.b_has_xdp().unwrap(), "XDP still attached after exit");
    assert!(moat_pins().is_empty(), "pins left: {:?}", moat_pins());
}

#[test]
fn sigint_detaches_cleanly() {
    if !common::privileged("sigint_detaches_cleanly") {
        return;
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let lab = quiet_lab("sig");
        let mut m = MoatProc::spawn(&["count", "-i", &lab.if_b, "--netns", &lab.ns_b, "--json"]);
        let id = prog_id(&m.wait_stderr("prog id", Duration::from_secs(10)));
        m.wait_stderr("attached to", Duration::from_secs(10));
        assert!(lab.b_has_xdp().unwrap());
        m.signal(sig);
        let (ok, stdout, stderr) = m.finish();
        assert!(
            ok,
            "signal {sig} must end moat count successfully:\n{stderr}"
        );
        let last: Value =
            serde_json::from_str(stdout.lines().last().expect("a final line")).unwrap();
        assert_eq!(
            last["final"], true,
            "a final totals line after signal {sig}"
        );
        assert!(
            !prog_loaded(id),
            "program {id} still loaded after signal {sig}"
        );
        assert!(
            !lab.b_has_xdp().unwrap(),
            "XDP still attached after signal {sig}"
        );
        assert!(moat_pins().is_empty());
    }
}

#[test]
fn existing_xdp_program_is_not_replaced() {
    if !common::privileged("existing_xdp_program_is_not_replaced") {
        return;
    }
    let lab = quiet_lab("busy");
    let mut first = MoatProc::spawn(&[
        "count",
        "-i",
        &lab.if_b,
        "--netns",
        &lab.ns_b,
        "--duration",
        "6",
    ]);
    let id = prog_id(&first.wait_stderr("prog id", Duration::from_secs(10)));
    first.wait_stderr("attached to", Duration::from_secs(10));
    let second = MoatProc::spawn(&[
        "count",
        "-i",
        &lab.if_b,
        "--netns",
        &lab.ns_b,
        "--duration",
        "1",
    ]);
    let (ok, _, stderr) = second.finish();
    assert!(!ok, "a second counter must refuse to attach");
    assert!(
        stderr.contains("already has an XDP program"),
        "clear message expected, got:\n{stderr}"
    );
    assert!(
        prog_loaded(id) && lab.b_has_xdp().unwrap(),
        "the first program must stay attached"
    );
    first.signal(libc::SIGINT);
    assert!(first.finish().0);
}

#[test]
fn bad_arguments_are_refused_plainly() {
    // No root needed: argument errors come before any BPF work.
    let cases: &[(&[&str], &str)] = &[
        (&["count"], "--interface"),
        (
            &["count", "-i", "x", "--interval", "0"],
            "seconds must be > 0",
        ),
        (
            &["count", "-i", "x", "--duration", "abc"],
            "not a number of seconds",
        ),
        (&["count", "-i", "x", "--mode", "turbo"], "turbo"),
    ];
    for (args, needle) in cases {
        let m = MoatProc::spawn(args);
        let (ok, _, stderr) = m.finish();
        assert!(!ok, "{args:?} must fail");
        assert!(
            stderr.contains(needle),
            "{args:?}: expected {needle:?} in:\n{stderr}"
        );
    }
    if common::privileged("bad_arguments_are_refused_plainly (unknown interface)") {
        let m = MoatProc::spawn(&["count", "-i", "moat-no-such0", "--duration", "1"]);
        let (ok, _, stderr) = m.finish();
        assert!(!ok);
        assert!(
            stderr.contains("no network interface named moat-no-such0"),
            "{stderr}"
        );
    }
}
