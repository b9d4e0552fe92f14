//! The firewall's packet handling as data: a table of (what, direction,
//! frame, expected reason, expected rule) run in order through the real
//! programs with BPF_PROG_TEST_RUN on one private instance (order matters
//! where a row relies on state an earlier row made: replies, related ICMP
//! errors, later fragments). Covers what the netns tests only see as counter
//! deltas: malformed headers, fragments, ICMP errors, NDP, VLAN stacks.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use moat_abi::fw::STAT_NAMES;
use moat_core::{
    fw::{Dir, compile::compile, policy},
    packet::*,
};
use moat_host::{fw::instance::FwInstance, loader::LogOpts};

const POLICY: &str = "
default: { ingress: deny, egress: allow }
rules:
  - { name: web, direction: ingress, action: allow, proto: tcp, ports: [80] }
  - { name: dns, direction: ingress, action: allow, proto: udp, ports: [53] }
  - { name: ping, direction: ingress, action: allow, proto: [icmp, icmpv6], icmp_types: [echo-request] }
  - { name: bad, direction: ingress, action: deny, remote: [192.0.2.66/32] }
";

const REMOTE4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const BAD4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
const LOCAL4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const REMOTE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);
const LOCAL6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// Which rule must have decided: a rule by name, the default, or none
/// (passed or dropped before any rule is looked at).
#[derive(Debug, Clone, Copy, PartialEq)]
enum By {
    Rule(&'static str),
    Default,
    Nothing,
}

struct Row {
    what: &'static str,
    dir: Dir,
    frame: Vec<u8>,
    reason: &'static str,
    by: By,
}

fn row(what: &'static str, dir: Dir, frame: Vec<u8>, reason: &'static str, by: By) -> Row {
    Row {
        what,
        dir,
        frame,
        reason,
        by,
    }
}

fn e4(p: Vec<u8>) -> Vec<u8> {
    eth(ETH_P_IP, &p)
}
fn e6(p: Vec<u8>) -> Vec<u8> {
    eth(ETH_P_IPV6, &p)
}
fn in4(proto: u8, l4: &[u8]) -> Vec<u8> {
    e4(ipv4(REMOTE4, LOCAL4, proto, l4))
}
fn tcp_in4(dport: u16) -> Vec<u8> {
    in4(
        IPPROTO_TCP,
        &tcp(Ips::V4(REMOTE4, LOCAL4), 40000, dport, TCP_SYN, 1, 0, &[]),
    )
}
/// A SYN from REMOTE4 over an IPv4 header with 4 bytes of options (NOPs).
fn syn_with_options4(sport: u16, dport: u16) -> Vec<u8> {
    let o = V4Opts {
        options: vec![1, 1, 1, 0],
        ..V4Opts::default()
    };
    let syn = tcp(Ips::V4(REMOTE4, LOCAL4), sport, dport, TCP_SYN, 1, 0, &[]);
    e4(ipv4_with(REMOTE4, LOCAL4, IPPROTO_TCP, &o, &syn))
}
fn tagged(tags: &[(u16, u16)], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    ethernet(MAC_DST, MAC_SRC, tags, ethertype, l3)
}

fn table() -> Vec<Row> {
    use By::*;
    use Dir::{Egress, Ingress};
    let ips4 = Ips::V4(REMOTE4, LOCAL4);
    let ips6 = Ips::V6(REMOTE6, LOCAL6);
    let syn4 = tcp(ips4, 40000, 80, TCP_SYN, 1, 0, &[]);
    let udp_dns = udp(ips4, 40001, 53, &[7; 64]);
    // Its own flow (the one above is tracked by the time fragments come).
    let udp_frag = udp(ips4, 40009, 53, &[7; 64]);
    let mut bad_ihl = tcp_in4(80);
    bad_ihl[14] = 0x43;
    let mut bad_version = tcp_in4(80);
    bad_version[14] = 0x65;
    // An egress UDP flow, so that an ICMP error quoting it is related.
    let out_udp = e4(ipv4(
        LOCAL4,
        REMOTE4,
        IPPROTO_UDP,
        &udp(Ips::V4(LOCAL4, REMOTE4), 41000, 5000, &[1; 8]),
    ));
    let quoted = ipv4(
        LOCAL4,
        REMOTE4,
        IPPROTO_UDP,
        &udp(Ips::V4(LOCAL4, REMOTE4), 41000, 5000, &[1; 8]),
    );
    let unreach = in4(IPPROTO_ICMP, &icmpv4(3, 3, [0; 4], &quoted));
    let stray_quoted = ipv4(
        LOCAL4,
        REMOTE4,
        IPPROTO_UDP,
        &udp(Ips::V4(LOCAL4, REMOTE4), 41999, 5999, &[1; 8]),
    );
    let stray_unreach = in4(IPPROTO_ICMP, &icmpv4(3, 3, [0; 4], &stray_quoted));
    let first = V4Opts {
        id: 77,
        more_fragments: true,
        dont_fragment: false,
        ..V4Opts::default()
    };
    let later = V4Opts {
        id: 77,
        frag_offset: 5,
        dont_fragment: false,
        ..V4Opts::default()
    };
    let orphan = V4Opts {
        id: 78,
        frag_offset: 5,
        dont_fragment: false,
        ..V4Opts::default()
    };
    let ns = icmpv6(REMOTE6, LOCAL6, 135, 0, [0; 4], &LOCAL6.octets());
    let mld2 = icmpv6(REMOTE6, LOCAL6, 143, 0, [0; 4], &[]);
    let echo6 = icmpv6(REMOTE6, LOCAL6, 128, 0, [0, 1, 0, 1], &[0; 8]);
    let mut nine_ext = tcp(ips6, 40000, 80, TCP_SYN, 1, 0, &[]);
    let mut next = IPPROTO_TCP;
    for _ in 0..9 {
        nine_ext = ipv6_ext(next, &[], &nine_ext);
        next = IPPROTO_DSTOPTS;
    }
    vec![
        // New connections, judged by the rules.
        row(
            "tcp to an allowed port",
            Ingress,
            tcp_in4(80),
            "pass_rule",
            Rule("web"),
        ),
        row(
            "tcp to a closed port",
            Ingress,
            tcp_in4(81),
            "drop_default",
            Default,
        ),
        row(
            "udp to an allowed port",
            Ingress,
            in4(IPPROTO_UDP, &udp_dns),
            "pass_rule",
            Rule("dns"),
        ),
        row(
            "deny beats allow",
            Ingress,
            e4(ipv4(BAD4, LOCAL4, IPPROTO_TCP, &syn4)),
            "drop_rule",
            Rule("bad"),
        ),
        row(
            "tcp over IPv6",
            Ingress,
            e6(ipv6(
                REMOTE6,
                LOCAL6,
                IPPROTO_TCP,
                &tcp(ips6, 40000, 80, TCP_SYN, 1, 0, &[]),
            )),
            "pass_rule",
            Rule("web"),
        ),
        // Frames beside the firewall's fast parse (plain IPv4 without
        // options or fragment bits, plain IPv6 straight to the transport)
        // take the generic parser: the same verdicts either way.
        row(
            "tcp with IP options",
            Ingress,
            syn_with_options4(40102, 80),
            "pass_rule",
            Rule("web"),
        ),
        row(
            "tcp with IP options to a closed port",
            Ingress,
            syn_with_options4(40103, 81),
            "drop_default",
            Default,
        ),
        row(
            "udp without DF (fast parse)",
            Ingress,
            e4(ipv4_with(
                REMOTE4,
                LOCAL4,
                IPPROTO_UDP,
                &V4Opts {
                    dont_fragment: false,
                    ..V4Opts::default()
                },
                &udp(ips4, 40104, 53, &[7; 16]),
            )),
            "pass_rule",
            Rule("dns"),
        ),
        row(
            "tcp over IPv6 after a hop-by-hop header",
            Ingress,
            e6(ipv6(
                REMOTE6,
                LOCAL6,
                IPPROTO_HOPOPTS,
                &ipv6_ext(IPPROTO_TCP, &[], &tcp(ips6, 40105, 80, TCP_SYN, 1, 0, &[])),
            )),
            "pass_rule",
            Rule("web"),
        ),
        row(
            "udp over IPv6 after destination options, closed port",
            Ingress,
            e6(ipv6(
                REMOTE6,
                LOCAL6,
                IPPROTO_DSTOPTS,
                &ipv6_ext(IPPROTO_UDP, &[], &udp(ips6, 40106, 54, &[7; 16])),
            )),
            "drop_default",
            Default,
        ),
        row(
            "IPv4 header and nothing after it",
            Ingress,
            in4(IPPROTO_TCP, &[]),
            "drop_malformed",
            Nothing,
        ),
        row(
            "IPv6 header and nothing after it",
            Ingress,
            e6(ipv6(REMOTE6, LOCAL6, IPPROTO_UDP, &[])),
            "drop_malformed",
            Nothing,
        ),
        row(
            "icmp echo request",
            Ingress,
            in4(IPPROTO_ICMP, &icmpv4(8, 0, [0, 9, 0, 1], &[0; 8])),
            "pass_rule",
            Rule("ping"),
        ),
        row(
            "unsolicited echo reply",
            Ingress,
            in4(IPPROTO_ICMP, &icmpv4(0, 0, [0, 8, 0, 1], &[0; 8])),
            "drop_default",
            Default,
        ),
        row(
            "icmpv6 echo request",
            Ingress,
            e6(ipv6(REMOTE6, LOCAL6, IPPROTO_ICMPV6, &echo6)),
            "pass_rule",
            Rule("ping"),
        ),
        row(
            "another protocol (GRE)",
            Ingress,
            in4(IPPROTO_GRE, &[0; 8]),
            "drop_default",
            Default,
        ),
        row(
            "egress, default allow",
            Egress,
            e4(ipv4(
                LOCAL4,
                REMOTE4,
                IPPROTO_TCP,
                &tcp(Ips::V4(LOCAL4, REMOTE4), 40000, 443, TCP_SYN, 1, 0, &[]),
            )),
            "pass_default",
            Default,
        ),
        // State: replies, related errors.
        row(
            "egress udp opens a flow",
            Egress,
            out_udp,
            "pass_default",
            Default,
        ),
        row(
            "its reply",
            Ingress,
            in4(IPPROTO_UDP, &udp(ips4, 5000, 41000, &[2; 8])),
            "pass_established",
            Default,
        ),
        row(
            "port unreachable quoting it",
            Ingress,
            unreach,
            "pass_related",
            Nothing,
        ),
        row(
            "port unreachable quoting nothing tracked",
            Ingress,
            stray_unreach,
            "drop_default",
            Default,
        ),
        // Never blocked, never judged.
        row(
            "arp",
            Ingress,
            eth(ETH_P_ARP, &arp_request(MAC_SRC, REMOTE4, LOCAL4)),
            "pass_non_ip",
            Nothing,
        ),
        row(
            "lldp",
            Ingress,
            eth(0x88CC, &[0; 46]),
            "pass_non_ip",
            Nothing,
        ),
        row(
            "neighbour solicitation",
            Ingress,
            e6(ipv6(REMOTE6, LOCAL6, IPPROTO_ICMPV6, &ns)),
            "pass_ndp",
            Nothing,
        ),
        row(
            "MLDv2 report",
            Ingress,
            e6(ipv6(REMOTE6, LOCAL6, IPPROTO_ICMPV6, &mld2)),
            "pass_ndp",
            Nothing,
        ),
        // Malformed.
        row(
            "IPv4 header cut",
            Ingress,
            tcp_in4(80)[..14 + 12].to_vec(),
            "drop_malformed",
            Nothing,
        ),
        row(
            "TCP header cut",
            Ingress,
            in4(IPPROTO_TCP, &syn4[..10]),
            "drop_malformed",
            Nothing,
        ),
        row(
            "UDP header cut",
            Ingress,
            in4(IPPROTO_UDP, &[0, 1, 2]),
            "drop_malformed",
            Nothing,
        ),
        row("IHL 3", Ingress, bad_ihl, "drop_malformed", Nothing),
        row(
            "version 6 in an IPv4 frame",
            Ingress,
            bad_version,
            "drop_malformed",
            Nothing,
        ),
        row(
            "IPv6 header cut",
            Ingress,
            e6(ipv6(REMOTE6, LOCAL6, IPPROTO_TCP, &[]))[..14 + 30].to_vec(),
            "drop_malformed",
            Nothing,
        ),
        row(
            "IPv6 extension header cut",
            Ingress,
            e6(ipv6(
                REMOTE6,
                LOCAL6,
                IPPROTO_HOPOPTS,
                &[IPPROTO_TCP, 4, 0, 0],
            )),
            "drop_malformed",
            Nothing,
        ),
        row(
            "nine IPv6 extension headers",
            Ingress,
            e6(ipv6(REMOTE6, LOCAL6, IPPROTO_DSTOPTS, &nine_ext)),
            "drop_malformed",
            Nothing,
        ),
        // Fragments.
        row(
            "first fragment of an allowed datagram",
            Ingress,
            e4(ipv4_with(
                REMOTE4,
                LOCAL4,
                IPPROTO_UDP,
                &first,
                &udp_frag[..40],
            )),
            "pass_rule",
            Rule("dns"),
        ),
        row(
            "its later fragment",
            Ingress,
            e4(ipv4_with(
                REMOTE4,
                LOCAL4,
                IPPROTO_UDP,
                &later,
                &udp_frag[40..],
            )),
            "pass_fragment",
            Nothing,
        ),
        row(
            "an orphan later fragment",
            Ingress,
            e4(ipv4_with(
                REMOTE4,
                LOCAL4,
                IPPROTO_UDP,
                &orphan,
                &udp_frag[40..],
            )),
            "drop_fragment",
            Nothing,
        ),
        row(
            "IPv6 later fragment, first never seen",
            Ingress,
            e6(ipv6(
                REMOTE6,
                LOCAL6,
                IPPROTO_FRAGMENT,
                &ipv6_frag(IPPROTO_UDP, 5, false, 9, &[0; 16]),
            )),
            "drop_fragment",
            Nothing,
        ),
        // VLAN stacks: judged like untagged up to the parser's depth.
        row(
            "one 802.1Q tag",
            Ingress,
            tagged(
                &[(ETH_P_8021Q, 10)],
                ETH_P_IP,
                &ipv4(
                    REMOTE4,
                    LOCAL4,
                    IPPROTO_TCP,
                    &tcp(ips4, 40002, 80, TCP_SYN, 1, 0, &[]),
                ),
            ),
            "pass_rule",
            Rule("web"),
        ),
        row(
            "three VID-0 tags, closed port",
            Ingress,
            tagged(
                &[(ETH_P_8021AD, 0), (ETH_P_8021Q, 0), (ETH_P_8021Q, 0)],
                ETH_P_IP,
                &ipv4(
                    REMOTE4,
                    LOCAL4,
                    IPPROTO_TCP,
                    &tcp(ips4, 40003, 81, TCP_SYN, 1, 0, &[]),
                ),
            ),
            "drop_default",
            Default,
        ),
        row(
            "eight tags over IPv6, allowed",
            Ingress,
            tagged(
                &[(ETH_P_8021Q, 0); 8],
                ETH_P_IPV6,
                &ipv6(REMOTE6, LOCAL6, IPPROTO_UDP, &udp(ips6, 40004, 53, &[0; 8])),
            ),
            "pass_rule",
            Rule("dns"),
        ),
        row(
            "nine tags: deeper than the parser follows",
            Ingress,
            tagged(
                &[(ETH_P_8021Q, 0); 9],
                ETH_P_IP,
                &ipv4(
                    REMOTE4,
                    LOCAL4,
                    IPPROTO_TCP,
                    &tcp(ips4, 40005, 80, TCP_SYN, 1, 0, &[]),
                ),
            ),
            "drop_vlan_depth",
            Nothing,
        ),
        row(
            "a cut tag",
            Ingress,
            tagged(&[(ETH_P_8021Q, 10)], ETH_P_IP, &[])[..16].to_vec(),
            "pass_non_ip",
            Nothing,
        ),
    ]
}

#[test]
fn every_fixture_gets_its_reason_and_rule() {
    if !common::privileged("every_fixture_gets_its_reason_and_rule") {
        return;
    }
    moat_host::sys::ensure_bpffs().unwrap();
    let pins =
        std::path::PathBuf::from(format!("/sys/fs/bpf/moat-fixtures-{}", std::process::id()));
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(pins.clone());
    let p = policy::parse(POLICY, std::path::Path::new("fixtures.yaml")).unwrap();
    let mut inst = FwInstance::load(
        &p,
        &compile(&p),
        1,
        &pins,
        &LogOpts::default(),
        &mut |_, _, _| {},
    )
    .unwrap_or_else(|e| panic!("loading fw: {e:#}"));
    let rows = table();
    let mut failures = Vec::new();
    for r in &rows {
        let got = inst.run(r.dir, &r.frame).unwrap();
        let reason = got.reason.map_or("(none)", |i| STAT_NAMES[i as usize]);
        let by = match got.rule {
            None => "nothing".to_string(),
            Some(0) => "default".to_string(),
            Some(id) => format!(
                "rule {}",
                p.rules
                    .get(id as usize - 1)
                    .map_or("(unknown)", |r| r.name.as_str())
            ),
        };
        let want_by = match r.by {
            By::Nothing => "nothing".to_string(),
            By::Default => "default".to_string(),
            By::Rule(n) => format!("rule {n}"),
        };
        let want_pass = r.reason.starts_with("pass_");
        if reason != r.reason || by != want_by || got.passed != want_pass {
            failures.push(format!(
                "{} ({:?}): got {reason} by {by} ({}), want {} by {want_by}",
                r.what,
                r.dir,
                if got.passed { "passed" } else { "dropped" },
                r.reason,
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}
