//! The firewall on a real veth pair between two namespaces, with real
//! connections: `moat fw apply` on b's end (ingress XDP, egress TCX), traffic
//! from a (and from b), verdicts checked by what gets through and by the
//! firewall's own counters.

mod common;

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use common::{FwRoot, in_ns, ping_ok, policy_file, prog_loaded};
use moat_host::{
    netlab::{self, Lab, LabConfig},
    sys::NetnsGuard,
    traffic::{EchoServers, Lockstep},
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// TCP connect + one echo round trip.
fn tcp_ok(ns: &str, dst: IpAddr, port: u16) -> bool {
    in_ns(ns, move || {
        let Ok(mut s) =
            TcpStream::connect_timeout(&SocketAddr::new(dst, port), Duration::from_millis(700))
        else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        let mut buf = [0u8; 5];
        s.write_all(b"hello").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"hello"
    })
}

/// One UDP request; true if the echo came back.
fn udp_ok(ns: &str, dst: IpAddr, port: u16) -> bool {
    in_ns(ns, move || {
        let bind: SocketAddr = if dst.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let u = UdpSocket::bind(bind).unwrap();
        u.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        u.send_to(b"ping", SocketAddr::new(dst, port)).unwrap();
        let mut buf = [0u8; 16];
        matches!(u.recv_from(&mut buf), Ok((4, _)))
    })
}

fn lab(prefix: &str) -> Lab {
    Lab::create(&common::tag(prefix), &LabConfig::default()).expect("creating lab")
}

fn apply(root: &FwRoot, lab: &Lab, policy: &std::path::Path) -> String {
    root.apply(lab, policy)
}

const DEFAULT_DENY: &str = "
default: { ingress: deny, egress: allow }
rules:
  - name: web
    direction: ingress
    action: allow
    proto: tcp
    ports: [7000]
  - name: dns
    direction: ingress
    action: allow
    proto: udp
    ports: [7001]
  - name: ping
    direction: ingress
    action: allow
    proto: [icmp, icmpv6]
    icmp_types: [echo-request]
";

#[test]
fn default_deny_lets_only_allowed_ports_in() {
    if !common::privileged("default_deny_lets_only_allowed_ports_in") {
        return;
    }
    let t = common::tag("dd");
    let lab = lab("dd");
    let root = FwRoot::new(&t);
    let _servers = EchoServers::start(&lab.ns_b, &[ip(netlab::B4), ip(netlab::B6)], 7000).unwrap();
    let _closed = EchoServers::start(&lab.ns_b, &[ip(netlab::B4), ip(netlab::B6)], 7002).unwrap();
    // Before the firewall everything answers.
    assert!(tcp_ok(&lab.ns_a, ip(netlab::B4), 7002));
    apply(&root, &lab, &policy_file(&t, DEFAULT_DENY));
    for b in [netlab::B4, netlab::B6] {
        assert!(tcp_ok(&lab.ns_a, ip(b), 7000), "tcp 7000 to {b} must pass");
        assert!(
            udp_ok(&lab.ns_a, ip(b), 7001),
            "udp 7001 to {b} must pass (and its reply)"
        );
        assert!(
            ping_ok(&lab.ns_a, ip(b)),
            "echo request to {b} must pass, and its reply"
        );
        assert!(
            !tcp_ok(&lab.ns_a, ip(b), 7002),
            "tcp 7002 to {b} must be dropped"
        );
        assert!(
            !udp_ok(&lab.ns_a, ip(b), 7003),
            "udp 7003 to {b} must be dropped"
        );
    }
    let s = root.status();
    let hits = |name: &str| {
        s["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == name)
            .unwrap()["packets"]
            .as_u64()
            .unwrap()
    };
    assert!(
        hits("web") > 0 && hits("dns") > 0 && hits("ping") > 0,
        "{s}"
    );
    assert!(
        s["reasons"]["drop_default"]["packets"].as_u64().unwrap() >= 4,
        "{s}"
    );
    let ct = &s["conntrack"];
    assert!(
        ct["new_entries"].as_u64().unwrap() + ct["assured_entries"].as_u64().unwrap() > 0,
        "{ct}"
    );
    // The allowed exchanges went both ways: assured.
    assert!(ct["assured"].as_u64().unwrap() > 0, "{ct}");
}

#[test]
fn egress_connections_get_their_replies_under_default_deny() {
    if !common::privileged("egress_connections_get_their_replies_under_default_deny") {
        return;
    }
    let t = common::tag("eg");
    let lab = lab("eg");
    let root = FwRoot::new(&t);
    let _servers = EchoServers::start(&lab.ns_a, &[ip(netlab::A4), ip(netlab::A6)], 7100).unwrap();
    apply(
        &root,
        &lab,
        &policy_file(&t, "default: { ingress: deny, egress: allow }\nrules: []\n"),
    );
    for a in [netlab::A4, netlab::A6] {
        assert!(
            tcp_ok(&lab.ns_b, ip(a), 7100),
            "b's TCP connection to {a} must get its replies"
        );
        assert!(
            udp_ok(&lab.ns_b, ip(a), 7101),
            "b's UDP query to {a} must get its reply"
        );
        assert!(
            ping_ok(&lab.ns_b, ip(a)),
            "b's ping to {a} must get its reply"
        );
        assert!(
            !ping_ok(
                &lab.ns_a,
                ip(if a == netlab::A4 {
                    netlab::B4
                } else {
                    netlab::B6
                })
            ),
            "a's ping to b must be dropped"
        );
    }
    assert!(root.reason("pass_established") > 0);
}

#[test]
fn a_new_policy_cuts_an_established_connection() {
    if !common::privileged("a_new_policy_cuts_an_established_connection") {
        return;
    }
    let t = common::tag("cut");
    let lab = lab("cut");
    let root = FwRoot::new(&t);
    let _servers = EchoServers::start(&lab.ns_b, &[ip(netlab::B4)], 7000).unwrap();
    let allow = policy_file(&t, DEFAULT_DENY);
    apply(&root, &lab, &allow);
    // An established connection, kept open across the update.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (rtx, rrx) = std::sync::mpsc::channel::<bool>();
    let ns = lab.ns_a.clone();
    let client = std::thread::spawn(move || {
        let _g = NetnsGuard::enter(&ns).unwrap();
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::new(ip(netlab::B4), 7000),
            Duration::from_secs(1),
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        let round = |s: &mut TcpStream| {
            let mut b = [0u8; 4];
            s.write_all(b"ping").is_ok() && s.read_exact(&mut b).is_ok()
        };
        rtx.send(round(&mut s)).unwrap();
        rx.recv().unwrap();
        rtx.send(round(&mut s)).unwrap();
    });
    assert!(
        rrx.recv().unwrap(),
        "the connection works under the first policy"
    );
    let deny = common::policy_file_as(
        &t,
        "deny.yaml",
        "default: { ingress: deny, egress: allow }\nrules: []\n",
    );
    apply(&root, &lab, &deny);
    tx.send(()).unwrap();
    assert!(
        !rrx.recv().unwrap(),
        "the established connection must be cut by the new policy"
    );
    client.join().unwrap();
    assert!(
        root.reason("drop_revoked") > 0,
        "the cut is counted as drop_revoked"
    );
    assert!(
        !tcp_ok(&lab.ns_a, ip(netlab::B4), 7000),
        "new connections are denied too"
    );
    apply(&root, &lab, &allow);
    assert!(tcp_ok(&lab.ns_a, ip(netlab::B4), 7000), "re-allowed");
    assert_eq!(root.status()["generation"], 3);
}

#[test]
fn icmp_errors_of_tracked_flows_pass() {
    if !common::privileged("icmp_errors_of_tracked_flows_pass") {
        return;
    }
    let t = common::tag("icmp");
    let lab = lab("icmp");
    let root = FwRoot::new(&t);
    apply(
        &root,
        &lab,
        &policy_file(&t, "default: { ingress: deny, egress: allow }\nrules: []\n"),
    );
    for a in [netlab::A4, netlab::A6] {
        // b sends to a closed UDP port on a; a answers "port unreachable";
        // the error quotes b's datagram, a tracked flow: it must reach b.
        let refused = in_ns(&lab.ns_b, move || {
            let bind: SocketAddr = if a.contains(':') {
                "[::]:0".parse().unwrap()
            } else {
                "0.0.0.0:0".parse().unwrap()
            };
            let u = UdpSocket::bind(bind).unwrap();
            u.connect(SocketAddr::new(ip(a), 7999)).unwrap();
            u.set_read_timeout(Some(Duration::from_millis(800)))
                .unwrap();
            u.send(b"x").unwrap();
            let mut b = [0u8; 8];
            matches!(u.recv(&mut b), Err(e) if e.kind() == ErrorKind::ConnectionRefused)
        });
        assert!(
            refused,
            "the ICMP error for the flow to {a} must pass (ECONNREFUSED expected)"
        );
    }
    assert!(root.reason("pass_related") >= 2, "{}", root.status());
}

#[test]
fn arp_and_neighbour_discovery_survive_default_deny_both_ways() {
    if !common::privileged("arp_and_neighbour_discovery_survive_default_deny_both_ways") {
        return;
    }
    let t = common::tag("ndp");
    let lab = lab("ndp");
    let root = FwRoot::new(&t);
    let _servers = EchoServers::start(&lab.ns_b, &[ip(netlab::B4), ip(netlab::B6)], 7000).unwrap();
    let pol = DEFAULT_DENY.replace("egress: allow", "egress: deny");
    apply(&root, &lab, &policy_file(&t, &pol));
    for ns in [&lab.ns_a, &lab.ns_b] {
        netlab::ip(&["-n", ns, "neigh", "flush", "all"]).unwrap();
    }
    assert!(
        tcp_ok(&lab.ns_a, ip(netlab::B4), 7000),
        "needs ARP both ways"
    );
    assert!(
        tcp_ok(&lab.ns_a, ip(netlab::B6), 7000),
        "needs NS/NA both ways"
    );
    assert!(root.reason("pass_non_ip") > 0, "ARP passes as non-IP");
    assert!(root.reason("pass_ndp") > 0, "NDP passes");
}

#[test]
fn malformed_truncated_and_fragmented_packets_are_handled_as_documented() {
    use moat_core::packet::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    if !common::privileged("malformed_truncated_and_fragmented_packets_are_handled_as_documented") {
        return;
    }
    let t = common::tag("mal");
    let lab = lab("mal");
    let root = FwRoot::new(&t);
    let _servers = EchoServers::start(&lab.ns_b, &[ip(netlab::B4), ip(netlab::B6)], 7000).unwrap();
    apply(&root, &lab, &policy_file(&t, DEFAULT_DENY));
    let (a4, b4): (Ipv4Addr, Ipv4Addr) = (netlab::A4.parse().unwrap(), netlab::B4.parse().unwrap());
    let (a6, b6): (Ipv6Addr, Ipv6Addr) = (netlab::A6.parse().unwrap(), netlab::B6.parse().unwrap());
    let e = |et: u16, p: &[u8]| ethernet(lab.mac_b, lab.mac_a, &[], et, p);
    let tcp4 = tcp(Ips::V4(a4, b4), 40000, 7000, TCP_SYN, 1, 0, &[]);
    let mut bad_ihl = e(ETH_P_IP, &ipv4(a4, b4, IPPROTO_TCP, &tcp4));
    bad_ihl[14] = 0x43;
    let malformed = vec![
        e(ETH_P_IP, &ipv4(a4, b4, IPPROTO_TCP, &tcp4))[..14 + 12].to_vec(), // IPv4 header cut
        e(ETH_P_IP, &ipv4(a4, b4, IPPROTO_TCP, &tcp4[..10])),               // TCP header cut
        e(ETH_P_IP, &ipv4(a4, b4, IPPROTO_UDP, &[0, 1, 2])),                // UDP header cut
        bad_ihl,                                                            // IHL 3
        e(ETH_P_IPV6, &ipv6(a6, b6, IPPROTO_TCP, &[]))[..14 + 30].to_vec(), // IPv6 header cut
        e(
            ETH_P_IPV6,
            &ipv6(a6, b6, IPPROTO_HOPOPTS, &[IPPROTO_TCP, 4, 0, 0]),
        ), // ext header cut
    ];
    let before = root.status()["reasons"].clone();
    moat_host::traffic::send_frames(&lab.ns_a, &lab.if_a, &malformed).unwrap();
    // Fragments of an allowed UDP datagram (port 7001): the later fragment
    // follows the first; an orphan later fragment is dropped.
    let payload = udp(Ips::V4(a4, b4), 40001, 7001, &[7u8; 64]);
    let first = V4Opts {
        id: 77,
        more_fragments: true,
        dont_fragment: false,
        ..Default::default()
    };
    let later = V4Opts {
        id: 77,
        frag_offset: 5,
        dont_fragment: false,
        ..Default::default()
    };
    let orphan = V4Opts {
        id: 78,
        frag_offset: 5,
        dont_fragment: false,
        ..Default::default()
    };
    let frags = vec![
        e(
            ETH_P_IP,
            &ipv4_with(a4, b4, IPPROTO_UDP, &first, &payload[..40]),
        ),
        e(
            ETH_P_IP,
            &ipv4_with(a4, b4, IPPROTO_UDP, &later, &payload[40..]),
        ),
        e(
            ETH_P_IP,
            &ipv4_with(a4, b4, IPPROTO_UDP, &orphan, &payload[40..]),
        ),
    ];
    moat_host::traffic::send_frames(&lab.ns_a, &lab.if_a, &frags).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let after = root.status()["reasons"].clone();
    let d =
        |n: &str| after[n]["packets"].as_u64().unwrap() - before[n]["packets"].as_u64().unwrap();
    assert_eq!(
        d("drop_malformed"),
        malformed.len() as u64,
        "every malformed frame dropped and counted: {after}"
    );
    assert_eq!(
        d("pass_fragment"),
        1,
        "the later fragment follows its first: {after}"
    );
    assert_eq!(
        d("drop_fragment"),
        1,
        "the orphan fragment is dropped: {after}"
    );
    assert!(
        d("pass_rule") >= 1,
        "the first fragment is judged by the rules: {after}"
    );
    // Nothing broke: allowed traffic still flows.
    assert!(tcp_ok(&lab.ns_a, ip(netlab::B4), 7000));
    assert!(tcp_ok(&lab.ns_a, ip(netlab::B6), 7000));
}

#[test]
fn hundred_applies_under_traffic_lose_no_allowed_packet() {
    if !common::privileged("hundred_applies_under_traffic_lose_no_allowed_packet") {
        return;
    }
    let t = common::tag("hund");
    let lab = lab("hund");
    let root = FwRoot::new(&t);
    let _servers = EchoServers::start(&lab.ns_b, &[ip(netlab::B4), ip(netlab::B6)], 7000).unwrap();
    let p1 = policy_file(&t, DEFAULT_DENY);
    let p2 = common::policy_file_as(
        &t,
        "second.yaml",
        &format!(
            "{DEFAULT_DENY}  - name: extra\n    direction: ingress\n    action: deny\n    remote: [192.0.2.0/24]\n"
        ),
    );
    apply(&root, &lab, &p1);
    let traffic = Lockstep::start(&lab.ns_a, &[ip(netlab::B4), ip(netlab::B6)], 7000).unwrap();
    for i in 0..100 {
        apply(&root, &lab, if i % 2 == 0 { &p2 } else { &p1 });
    }
    let (sent, lost) = traffic.finish().unwrap();
    let s = root.status();
    eprintln!("{} exchanges during 100 applies, {} lost", sent, lost);
    assert_eq!(s["generation"], 101);
    assert!(sent > 400, "traffic must run during the applies");
    assert_eq!(lost, 0, "no allowed packet may be lost: {s}");
    for r in [
        "drop_rule",
        "drop_revoked",
        "drop_malformed",
        "drop_fragment",
    ] {
        assert_eq!(s["reasons"][r]["packets"], 0, "{r}: {s}");
    }
}

#[test]
fn a_bad_policy_changes_nothing_and_detach_leaves_nothing() {
    if !common::privileged("a_bad_policy_changes_nothing_and_detach_leaves_nothing") {
        return;
    }
    let t = common::tag("bad");
    let lab = lab("bad");
    let root = FwRoot::new(&t);
    let _servers = EchoServers::start(&lab.ns_b, &[ip(netlab::B4)], 7000).unwrap();
    let out = apply(&root, &lab, &policy_file(&t, DEFAULT_DENY));
    let ids: Vec<u32> = out
        .split(" id ")
        .skip(1)
        .map(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 2, "apply names both programs: {out}");
    let bad = common::policy_file_as(
        &t,
        "bad.yaml",
        "default: { ingress: allow }\nrules:\n  - name: x\n    direction: in\n    action: allow\n    ports: [0]\n",
    );
    let (ok, _, err) = root.moat(&[
        "fw",
        "apply",
        "-f",
        bad.to_str().unwrap(),
        "-i",
        &lab.if_b,
        "--netns",
        &lab.ns_b,
    ]);
    assert!(!ok, "a bad policy must be refused");
    assert!(
        err.contains(&format!(
            "{}:4:16: \"in\" is not a direction",
            bad.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}:6:13: port 0", bad.display())),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(
        root.status()["generation"],
        1,
        "the running firewall is untouched"
    );
    assert!(
        !tcp_ok(&lab.ns_a, ip(netlab::B4), 7001),
        "still default deny"
    );
    assert!(
        tcp_ok(&lab.ns_a, ip(netlab::B4), 7000),
        "still allowing 7000"
    );

    root.ok(&["fw", "detach"]);
    assert!(!lab.b_has_xdp().unwrap(), "XDP detached");
    for id in ids {
        assert!(!prog_loaded(id), "program {id} unloaded");
    }
    assert!(
        !std::path::Path::new(&root.pin_root).exists(),
        "pins removed"
    );
    assert!(tcp_ok(&lab.ns_a, ip(netlab::B4), 7000));
}

/// A firewall whose conntrack predates the presence filter (its fw_ctseen
/// pin is missing): the next apply teaches the new filter every tracked
/// connection, so replies keep passing under default deny.
#[test]
fn tracked_connections_survive_an_apply_over_conntrack_without_presence_filter() {
    if !common::privileged(
        "tracked_connections_survive_an_apply_over_conntrack_without_presence_filter",
    ) {
        return;
    }
    survive_a_filter_change("seed", |pin| std::fs::remove_file(pin).unwrap());
}

/// An older moat's presence filter of another size (65,536 slots, empty where
/// this moat's hash puts the flow): the apply moves it aside and seeds a
/// filter of this moat's size. Reused as it was, the program would find the
/// flow's slot at 0 and drop its packets as new.
#[test]
fn tracked_connections_survive_an_apply_over_a_presence_filter_of_another_size() {
    if !common::privileged(
        "tracked_connections_survive_an_apply_over_a_presence_filter_of_another_size",
    ) {
        return;
    }
    // The previous moat's shapes: one u32 per entry, 65,536 then 16,384
    // filter slots, 8,192 tags.
    for (tag, slots) in [("sdsz", "65536"), ("sdln", "16384")] {
        survive_a_filter_change(tag, |pin| {
            old_shape(pin, slots);
            old_shape(&pin.with_file_name(moat_abi::fw::MAP_FLOWTAGS), "8192");
        });
    }
}

/// Replaces the pinned array at `pin` with one of u32 values and `entries`
/// entries, as an older moat pinned it.
fn old_shape(pin: &std::path::Path, entries: &str) {
    std::fs::remove_file(pin).unwrap();
    let name = pin.file_name().unwrap().to_str().unwrap();
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(pin)
        .args([
            "type", "array", "key", "4", "value", "4", "entries", entries, "name", name,
        ])
        .output()
        .expect("running bpftool");
    assert!(
        out.status.success(),
        "bpftool map create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn survive_a_filter_change(name: &str, change: impl FnOnce(&std::path::Path)) {
    let t = common::tag(name);
    let lab = lab(name);
    let root = FwRoot::new(&t);
    let p = policy_file(&t, "default: { ingress: deny, egress: allow }\nrules: []\n");
    apply(&root, &lab, &p);
    // A UDP flow b -> a; afterwards a talks first on it (ingress first).
    let peer = in_ns(&lab.ns_a, || {
        let u = UdpSocket::bind(SocketAddr::new(ip(netlab::A4), 7200)).unwrap();
        u.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        u
    });
    let mine = in_ns(&lab.ns_b, || {
        let u = UdpSocket::bind(SocketAddr::new(ip(netlab::B4), 0)).unwrap();
        u.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        u
    });
    let mut buf = [0u8; 16];
    mine.send_to(b"hi", SocketAddr::new(ip(netlab::A4), 7200))
        .unwrap();
    let (_, b_addr) = peer.recv_from(&mut buf).unwrap();
    let mut a_talks_first = || {
        peer.send_to(b"push", b_addr).unwrap();
        matches!(mine.recv_from(&mut buf), Ok((4, _)))
    };
    assert!(a_talks_first(), "a's packet on the tracked flow passes");
    // As if the running firewall had been made without the filter.
    let pin = std::path::Path::new(&root.pin_root)
        .join("fw")
        .join(moat_abi::fw::MAP_CTSEEN);
    change(&pin);
    apply(&root, &lab, &p);
    assert!(pin.exists(), "the new filter is pinned");
    let info = aya::maps::MapData::from_pin(&pin).unwrap().info().unwrap();
    assert_eq!(
        info.max_entries(),
        moat_abi::fw::CTSEEN_SLOTS / moat_abi::fw::LINE_SLOTS,
        "filter size"
    );
    let tags = aya::maps::MapData::from_pin(pin.with_file_name(moat_abi::fw::MAP_FLOWTAGS))
        .unwrap()
        .info()
        .unwrap();
    assert_eq!(
        (tags.value_size(), tags.max_entries()),
        (64, moat_abi::fw::FLOW_SLOTS / moat_abi::fw::LINE_SLOTS),
        "flow tags of the current shape"
    );
    assert!(
        a_talks_first(),
        "after the apply, a's packet on the tracked flow still passes (filter seeded from conntrack)"
    );
    assert_eq!(root.reason("drop_default"), 0);
}
