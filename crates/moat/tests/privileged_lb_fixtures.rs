//! The load balancer's data plane, frame by frame (BPF_PROG_TEST_RUN):
//! fixtures as data (v4 and v6 VIPs, NAT and DSR output frames checked
//! field by field with valid checksums, reply translation, port remap,
//! any-port VIP, ICMP echo, fragments, IP options, truncated headers,
//! non-VIP traffic, no backend), exact counters, and the differential test
//! of the kernel's backend choice against moat-core's reference on random
//! backend sets, weights, states and hash fields.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use moat_abi::lb as abi;
use moat_core::{
    lb::{self as core, BackendId, State, encode},
    packet::{self as pkt, Decoded, Ips},
};
use moat_host::{
    lb::instance::LbInstance,
    loader::LogOpts,
    netlab::{LbLab, ip},
    sys::NetnsGuard,
    traffic::ifindex,
};
use rand::{Rng, SeedableRng, rngs::SmallRng};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const BACKEND_MAC: [u8; 6] = [0x02, 0xbe, 0, 0, 1, 2];
const BACKEND3_MAC: [u8; 6] = [0x02, 0xbe, 0, 0, 1, 3];
const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 1];

const CONFIG: &str = "\
services:
  - { name: web, vip: 10.200.0.10, port: 80, proto: tcp, backends: [{ address: 10.197.1.2, port: 8080 }] }
  - { name: dns, vip: 10.200.0.10, port: 53, proto: udp, backends: [10.197.1.2] }
  - { name: any, vip: 10.200.0.20, proto: tcp, backends: [10.197.1.3] }
  - { name: web6, vip: \"fd00:200::10\", port: 80, proto: tcp, backends: [{ address: \"fd00:197:1::2\", port: 8080 }] }
  - { name: dsr, vip: 10.200.0.30, port: 8080, proto: tcp, mode: dsr, backends: [10.197.1.2] }
  - { name: dsr6, vip: \"fd00:200::30\", port: 8080, proto: tcp, mode: dsr, backends: [\"fd00:197:1::2\"] }
  - { name: empty, vip: 10.200.0.40, port: 80, proto: tcp, backends: [{ address: 10.197.1.2, weight: 0 }] }
  - { name: amb1, vip: 10.200.0.50, port: 80, proto: tcp, backends: [{ address: 10.197.1.3, port: 9000 }] }
  - { name: amb2, vip: 10.200.0.51, port: 80, proto: tcp, backends: [{ address: 10.197.1.3, port: 9000 }] }
";

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn pin_dir(tag: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/sys/fs/bpf/moat-test-{tag}/lb"))
}

struct PinGuard(std::path::PathBuf);
impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
    }
}

/// One fixture: a frame in, the verdict and the frame out.
struct Case {
    name: &'static str,
    ifname: &'static str,
    frame: Vec<u8>,
    ret: u32,
    /// Expected (src, sport, dst, dport, ttl, dst MAC) of the output.
    out: Option<(IpAddr, u16, IpAddr, u16, u8, [u8; 6])>,
    /// The reason counter this packet adds to.
    reason: u32,
    /// ICMP errors: the quoted packet's (src, sport, dst, dport) afterwards.
    inner: Option<(IpAddr, u16, IpAddr, u16)>,
}

fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let out = ip(&["-n", ns, "link", "show", "dev", dev]).unwrap();
    let m = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap();
    let v: Vec<u8> = m
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

#[test]
fn lb_fixtures() {
    if !common::privileged("lb_fixtures") {
        return;
    }
    let tag = common::tag("lbfx");
    let lab = LbLab::create(&tag, 1).expect("lab");
    let l = lab.ns_l.clone();
    for (addr, m, dev) in [
        ("10.197.1.2", BACKEND_MAC, "be1"),
        ("10.197.1.3", BACKEND3_MAC, "be1"),
        ("fd00:197:1::2", BACKEND_MAC, "be1"),
        ("10.198.0.1", CLIENT_MAC, "cli"),
        ("fd00:198::1", CLIENT_MAC, "cli"),
    ] {
        ip(&[
            "-n",
            &l,
            "neigh",
            "replace",
            addr,
            "lladdr",
            &mac(m),
            "dev",
            dev,
            "nud",
            "permanent",
        ])
        .unwrap();
    }
    let pins = pin_dir(&tag);
    let _pg = PinGuard(pins.clone());
    let cfg = core::parse(CONFIG, std::path::Path::new("fixtures.yaml")).unwrap();
    let none = |_: &str, _: BackendId| None;
    let enc = encode::encode(&cfg, &cfg.services, &encode::Running::default(), 1, &none).unwrap();

    let be1_mac = mac_of(&l, "be1");
    let cli_mac = mac_of(&l, "cli");
    std::thread::spawn(move || {
        let _ns = NetnsGuard::enter(&l).unwrap();
        moat_host::sys::ensure_bpffs().unwrap();
        let mut inst = LbInstance::load(&enc, 65536, &pins, &LogOpts::default()).unwrap();
        inst.write_shared(&enc).unwrap();
        // A frame from an interface the balancer does not run on passes.
        let probe = pkt::tcp4_frame(
            v4("10.198.0.1"),
            v4("10.200.0.10"),
            39999,
            80,
            pkt::TCP_SYN,
            b"",
        );
        let (ret, _) = inst.run(&probe, Some(ifindex("cli").unwrap())).unwrap();
        assert_eq!(
            ret, XDP_PASS,
            "the balancer ran on an interface it was not given"
        );
        inst.allow_iface(ifindex("cli").unwrap()).unwrap();
        inst.allow_iface(ifindex("be1").unwrap()).unwrap();
        let cli = v4("10.198.0.1");
        let cli6 = v6("fd00:198::1");
        let vip = v4("10.200.0.10");
        let be = v4("10.197.1.2");
        let be6 = v6("fd00:197:1::2");
        let vip6 = v6("fd00:200::10");
        let syn = pkt::TCP_SYN;
        let ack = pkt::TCP_ACK;
        let with_opts = {
            let seg = pkt::tcp(Ips::V4(cli, vip), 40001, 80, syn, 1, 0, b"");
            let o = pkt::V4Opts {
                options: vec![0x94, 0x04, 0, 0], // router alert
                ..Default::default()
            };
            pkt::eth(pkt::ETH_P_IP, &pkt::ipv4_with(cli, vip, 6, &o, &seg))
        };
        let fragment = {
            let seg = pkt::udp(Ips::V4(cli, vip), 5000, 53, &[0; 32]);
            let o = pkt::V4Opts {
                more_fragments: true,
                dont_fragment: false,
                ..Default::default()
            };
            pkt::eth(pkt::ETH_P_IP, &pkt::ipv4_with(cli, vip, 17, &o, &seg))
        };
        let truncated = pkt::eth(pkt::ETH_P_IP, &pkt::ipv4(cli, vip, 6, &[0u8; 10]));
        let udp_nosum = {
            let mut seg = pkt::udp(Ips::V4(cli, vip), 5001, 53, b"q");
            seg[6] = 0;
            seg[7] = 0;
            pkt::eth(pkt::ETH_P_IP, &pkt::ipv4(cli, vip, 17, &seg))
        };
        let echo4 = pkt::eth(
            pkt::ETH_P_IP,
            &pkt::ipv4(cli, vip, 1, &pkt::icmpv4(8, 0, [0, 7, 0, 1], b"ping")),
        );
        let echo6 = pkt::eth(
            pkt::ETH_P_IPV6,
            &pkt::ipv6(
                cli6,
                vip6,
                58,
                &pkt::icmpv6(cli6, vip6, 128, 0, [0, 7, 0, 1], b"ping"),
            ),
        );
        // ICMP errors quoting a packet: (outer src, outer dst, quoted src:port -> dst:port).
        let err4 = |osrc: Ipv4Addr, odst: Ipv4Addr, ty: u8, code: u8, qs: Ipv4Addr, qsp: u16, qd: Ipv4Addr, qdp: u16| {
            let seg = pkt::tcp(Ips::V4(qs, qd), qsp, qdp, ack, 7, 0, b"");
            let quoted = pkt::ipv4(qs, qd, 6, &seg);
            pkt::eth(
                pkt::ETH_P_IP,
                &pkt::ipv4(osrc, odst, 1, &pkt::icmpv4(ty, code, [0, 0, 5, 0xdc], &quoted[..28])),
            )
        };
        let err6 = |osrc: Ipv6Addr, odst: Ipv6Addr, qs: Ipv6Addr, qsp: u16, qd: Ipv6Addr, qdp: u16| {
            let seg = pkt::tcp(Ips::V6(qs, qd), qsp, qdp, ack, 7, 0, b"");
            let quoted = pkt::ipv6(qs, qd, 6, &seg);
            pkt::eth(
                pkt::ETH_P_IPV6,
                &pkt::ipv6(osrc, odst, 58, &pkt::icmpv6(osrc, odst, 2, 0, [0, 0, 5, 0xdc], &quoted[..48])),
            )
        };
        let router = v4("10.198.0.254");
        let router6 = v6("fd00:198::fe");
        let cases = vec![
            Case {
                name: "NAT v4 SYN: destination and port rewritten, sent to the backend",
                ifname: "cli",
                frame: pkt::tcp4_frame(cli, vip, 40000, 80, syn, b""),
                ret: XDP_REDIRECT,
                out: Some((cli.into(), 40000, be.into(), 8080, 63, BACKEND_MAC)),
                reason: abi::STAT_NEW,
                inner: None,
            },
            Case {
                name: "NAT v4: the same connection again is tracked",
                ifname: "cli",
                frame: pkt::tcp4_frame(cli, vip, 40000, 80, ack, b"GET /"),
                ret: XDP_REDIRECT,
                out: Some((cli.into(), 40000, be.into(), 8080, 63, BACKEND_MAC)),
                reason: abi::STAT_TRACKED,
                inner: None,
            },
            Case {
                name: "NAT v4 reply: source set back to the VIP and port 80",
                ifname: "be1",
                frame: pkt::tcp4_frame(be, cli, 8080, 40000, syn | ack, b""),
                ret: XDP_REDIRECT,
                out: Some((vip.into(), 80, cli.into(), 40000, 63, CLIENT_MAC)),
                reason: abi::STAT_REPLY,
                inner: None,
            },
            Case {
                name: "a backend's packet that answers no connection passes untouched",
                ifname: "be1",
                frame: pkt::tcp4_frame(be, cli, 8080, 49999, ack, b""),
                ret: XDP_PASS,
                out: Some((be.into(), 8080, cli.into(), 49999, 64, pkt::MAC_DST)),
                reason: abi::STAT_PASS,
                inner: None,
            },
            Case {
                name: "one backend in two services (1): SYN to the first VIP",
                ifname: "cli",
                frame: pkt::tcp4_frame(cli, v4("10.200.0.50"), 40010, 80, syn, b""),
                ret: XDP_REDIRECT,
                out: Some((
                    cli.into(),
                    40010,
                    v4("10.197.1.3").into(),
                    9000,
                    63,
                    BACKEND3_MAC,
                )),
                reason: abi::STAT_NEW,
                inner: None,
            },
            Case {
                name: "one backend in two services (2): SYN to the second VIP",
                ifname: "cli",
                frame: pkt::tcp4_frame(cli, v4("10.200.0.51"), 40011, 80, syn, b""),
                ret: XDP_REDIRECT,
                out: Some((
                    cli.into(),
                    40011,
                    v4("10.197.1.3").into(),
                    9000,
                    63,
                    BACKEND3_MAC,
                )),
                reason: abi::STAT_NEW,
                inner: None,
            },
            Case {
                name: "one backend in two services: each reply gets its own VIP back",
                ifname: "be1",
                frame: pkt::tcp4_frame(v4("10.197.1.3"), cli, 9000, 40011, syn | ack, b""),
                ret: XDP_REDIRECT,
                out: Some((
                    v4("10.200.0.51").into(),
                    80,
                    cli.into(),
                    40011,
                    63,
                    CLIENT_MAC,
                )),
                reason: abi::STAT_REPLY,
                inner: None,
            },
            Case {
                name: "one backend in two services: the other reply",
                ifname: "be1",
                frame: pkt::tcp4_frame(v4("10.197.1.3"), cli, 9000, 40010, syn | ack, b""),
                ret: XDP_REDIRECT,
                out: Some((
                    v4("10.200.0.50").into(),
                    80,
                    cli.into(),
                    40010,
                    63,
                    CLIENT_MAC,
                )),
                reason: abi::STAT_REPLY,
                inner: None,
            },
            Case {
                name: "NAT v4 with IP options",
                ifname: "cli",
                frame: with_opts,
                ret: XDP_REDIRECT,
                out: Some((cli.into(), 40001, be.into(), 8080, 63, BACKEND_MAC)),
                reason: abi::STAT_NEW,
                inner: None,
            },
            Case {
                name: "UDP service, no port remap",
                ifname: "cli",
                frame: pkt::udp4_frame(cli, vip, 5000, 53, b"query"),
                ret: XDP_REDIRECT,
                out: Some((cli.into(), 5000, be.into(), 53, 63, BACKEND_MAC)),
                reason: abi::STAT_NEW,
                inner: None,
            },
            Case {
                name: "UDP without a checksum keeps none",
                ifname: "cli",
                frame: udp_nosum,
                ret: XDP_REDIRECT,
                out: Some((cli.into(), 5001, be.into(), 53, 63, BACKEND_MAC)),
                reason: abi::STAT_NEW,
                inner: None,
            },
            Case {
                name: "any-port VIP keeps the port",
                ifname: "cli",
                frame: pkt::tcp4_frame(cli, v4("10.200.0.20"), 40002, 5555, syn, b""),
                ret: XDP_REDIRECT,
                out: Some((
                    cli.into(),
                    40002,
                    v4("10.197.1.3").into(),
                    5555,
                    63,
                    BACKEND3_MAC,
                )),
                reason: abi::STAT_NEW,
                inner: None,
            },
            Case {
                name: "NAT v6 SYN",
                ifname: "cli",
                frame: pkt::tcp6_frame(cli6, vip6, 40003, 80, syn, b""),
                ret: XDP_REDIRECT,
                out: Some((cli6.into(), 40003, be6.into(), 8080, 63, BACKEND_MAC)),
                reason: abi::STAT_NEW,
                inner: None,
            },
            Case {
                name: "NAT v6 reply",
                ifname: "be1",
                frame: pkt::tcp6_frame(be6, cli6, 8080, 40003, syn | ack, b""),
                ret: XDP_REDIRECT,
                out: Some((vip6.into(), 80, cli6.into(), 40003, 63, CLIENT_MAC)),
                reason: abi::STAT_REPLY,
                inner: None,
            },
            Case {
                name: "DSR v4: only the MAC changes",
                ifname: "cli",
                frame: pkt::tcp4_frame(cli, v4("10.200.0.30"), 40004, 8080, syn, b""),
                ret: XDP_REDIRECT,
                out: Some((
                    cli.into(),
                    40004,
                    v4("10.200.0.30").into(),
                    8080,
                    64,
                    BACKEND_MAC,
                )),
                reason: abi::STAT_NEW,
                inner: None,
            },
            Case {
                name: "DSR v6",
                ifname: "cli",
                frame: pkt::tcp6_frame(cli6, v6("fd00:200::30"), 40005, 8080, syn, b""),
                ret: XDP_REDIRECT,
                out: Some((
                    cli6.into(),
                    40005,
                    v6("fd00:200::30").into(),
                    8080,
                    64,
                    BACKEND_MAC,
                )),
                reason: abi::STAT_NEW,
                inner: None,
            },
            Case {
                name: "no backend with weight > 0: dropped",
                ifname: "cli",
                frame: pkt::tcp4_frame(cli, v4("10.200.0.40"), 40006, 80, syn, b""),
                ret: XDP_DROP,
                out: None,
                reason: abi::STAT_DROP_NO_BACKEND,
                inner: None,
            },
            Case {
                name: "ICMP echo to a VIP is answered",
                ifname: "cli",
                frame: echo4,
                ret: XDP_TX,
                out: Some((vip.into(), 0, cli.into(), 0, 64, pkt::MAC_SRC)),
                reason: abi::STAT_ECHO,
                inner: None,
            },
            Case {
                name: "ICMPv6 echo to a VIP is answered",
                ifname: "cli",
                frame: echo6,
                ret: XDP_TX,
                out: Some((vip6.into(), 129 << 8, cli6.into(), 0, 64, pkt::MAC_SRC)),
                reason: abi::STAT_ECHO,
                inner: None,
            },
            Case {
                name: "a fragment to a VIP is dropped (no ports to balance by)",
                ifname: "cli",
                frame: fragment,
                ret: XDP_DROP,
                out: None,
                reason: abi::STAT_DROP_FRAGMENT,
                inner: None,
            },
            Case {
                name: "a truncated TCP header to a VIP is dropped",
                ifname: "cli",
                frame: truncated,
                ret: XDP_DROP,
                out: None,
                reason: abi::STAT_DROP_MALFORMED,
                inner: None,
            },
            Case {
                name: "a port of a VIP that no service takes is dropped",
                ifname: "cli",
                frame: pkt::udp4_frame(cli, vip, 5002, 9999, b"x"),
                ret: XDP_DROP,
                out: None,
                reason: abi::STAT_DROP_PROTO,
                inner: None,
            },
            Case {
                name: "ICMP error about what the VIP sent (NAT): to the backend, quoting the backend",
                ifname: "cli",
                frame: err4(router, vip, 3, 4, vip, 80, cli, 40000),
                ret: XDP_REDIRECT,
                out: Some((router.into(), 3, be.into(), 4, 63, BACKEND_MAC)),
                reason: abi::STAT_ICMP_ERROR,
                inner: Some((be.into(), 8080, cli.into(), 40000)),
            },
            Case {
                name: "ICMP error a NAT backend sends about what it got: to the client, from the VIP",
                ifname: "be1",
                frame: err4(be, cli, 3, 3, cli, 40000, be, 8080),
                ret: XDP_REDIRECT,
                out: Some((vip.into(), 3, cli.into(), 3, 63, CLIENT_MAC)),
                reason: abi::STAT_ICMP_ERROR,
                inner: Some((cli.into(), 40000, vip.into(), 80)),
            },
            Case {
                name: "ICMPv6 packet too big about what the VIP sent: to the backend",
                ifname: "cli",
                frame: err6(router6, vip6, vip6, 80, cli6, 40003),
                ret: XDP_REDIRECT,
                out: Some((router6.into(), 2, be6.into(), 0, 63, BACKEND_MAC)),
                reason: abi::STAT_ICMP_ERROR,
                inner: Some((be6.into(), 8080, cli6.into(), 40003)),
            },
            Case {
                name: "ICMP error about a DSR connection: to the backend unchanged",
                ifname: "cli",
                frame: err4(router, v4("10.200.0.30"), 3, 4, v4("10.200.0.30"), 8080, cli, 40004),
                ret: XDP_REDIRECT,
                out: Some((router.into(), 3, v4("10.200.0.30").into(), 4, 64, BACKEND_MAC)),
                reason: abi::STAT_ICMP_ERROR,
                inner: Some((v4("10.200.0.30").into(), 8080, cli.into(), 40004)),
            },
            Case {
                name: "ICMP error about no balanced connection: the kernel's",
                ifname: "cli",
                frame: err4(router, vip, 3, 4, vip, 80, cli, 41234),
                ret: XDP_PASS,
                out: Some((router.into(), 3, vip.into(), 4, 64, pkt::MAC_DST)),
                reason: abi::STAT_PASS,
                inner: Some((vip.into(), 80, cli.into(), 41234)),
            },
            Case {
                name: "traffic to anything else passes untouched",
                ifname: "cli",
                frame: pkt::tcp4_frame(cli, v4("10.198.0.2"), 40007, 22, syn, b""),
                ret: XDP_PASS,
                out: Some((
                    cli.into(),
                    40007,
                    v4("10.198.0.2").into(),
                    22,
                    64,
                    pkt::MAC_DST,
                )),
                reason: abi::STAT_PASS,
                inner: None,
            },
        ];
        let mut expect = vec![0u64; abi::STAT_MAX as usize];
        let before = inst.stats().unwrap();
        for c in &cases {
            let idx = ifindex(c.ifname).unwrap();
            let (ret, out) = inst.run(&c.frame, Some(idx)).unwrap();
            assert_eq!(ret, c.ret, "{}: return value", c.name);
            expect[c.reason as usize] += 1;
            match ret {
                XDP_TX => expect[abi::STAT_OUT_TX as usize] += 1,
                XDP_REDIRECT => expect[abi::STAT_OUT_REDIRECT as usize] += 1,
                _ => {}
            }
            let Some((src, sport, dst, dport, ttl, dmac)) = c.out else {
                continue;
            };
            let d: Decoded = pkt::decode(&out)
                .unwrap_or_else(|| panic!("{}: output frame does not decode", c.name));
            assert_eq!((d.src, d.dst), (src, dst), "{}: addresses", c.name);
            if d.proto == 6 || d.proto == 17 || c.inner.is_some() {
                assert_eq!((d.sport, d.dport), (sport, dport), "{}: ports (ICMP: type, code)", c.name);
            } else {
                assert_eq!(d.sport, if src.is_ipv4() { 0 } else { 129 }, "{}: echo reply type", c.name);
            }
            if let Some((qs, qsp, qd, qdp)) = c.inner {
                // The quoted packet starts after the outer IP and ICMP headers.
                let q = if src.is_ipv4() { 14 + 20 + 8 } else { 14 + 40 + 8 };
                let (qsrc, qdst, ql4): (IpAddr, IpAddr, usize) = if src.is_ipv4() {
                    assert_eq!(pkt::checksum(&out[q..q + 20]), 0, "{}: quoted IPv4 header checksum", c.name);
                    (
                        IpAddr::from(<[u8; 4]>::try_from(&out[q + 12..q + 16]).unwrap()),
                        IpAddr::from(<[u8; 4]>::try_from(&out[q + 16..q + 20]).unwrap()),
                        q + 20,
                    )
                } else {
                    (
                        IpAddr::from(<[u8; 16]>::try_from(&out[q + 8..q + 24]).unwrap()),
                        IpAddr::from(<[u8; 16]>::try_from(&out[q + 24..q + 40]).unwrap()),
                        q + 40,
                    )
                };
                let port = |o: usize| u16::from_be_bytes([out[ql4 + o], out[ql4 + o + 1]]);
                assert_eq!((qsrc, port(0), qdst, port(2)), (qs, qsp, qd, qdp), "{}: quoted packet", c.name);
            }
            assert_eq!(d.ttl, ttl, "{}: ttl / hop limit", c.name);
            assert_eq!(d.dst_mac, dmac, "{}: destination MAC", c.name);
            if ret == XDP_REDIRECT {
                let smac = if dmac == CLIENT_MAC { cli_mac } else { be1_mac };
                assert_eq!(d.src_mac, smac, "{}: source MAC", c.name);
            }
            assert!(
                d.ip_csum_ok,
                "{}: IPv4 header checksum\n{}",
                c.name,
                pkt::hex(&out)
            );
            assert!(d.l4_csum_ok, "{}: L4 checksum\n{}", c.name, pkt::hex(&out));
            if c.name.starts_with("UDP without") {
                assert!(d.l4_csum_zero, "{}", c.name);
            }
        }
        let after = inst.stats().unwrap();
        for i in 0..abi::STAT_MAX as usize {
            assert_eq!(
                after[i].packets - before[i].packets,
                expect[i],
                "counter {}",
                abi::STAT_NAMES[i]
            );
        }
        // Per service and per backend: web saw SYN, tracked, options SYN
        // (the reply is counted as a reply, not as service traffic).
        let sstats = inst.service_stats().unwrap();
        let web = enc
            .services
            .iter()
            .find(|(_, s)| encode::svc_name(s) == "web")
            .unwrap()
            .0;
        assert_eq!(sstats[web as usize].packets, 3);
        // Connections: one per new connection balanced.
        assert_eq!(
            inst.conns().unwrap().len() as u64,
            expect[abi::STAT_NEW as usize]
        );
        // Per backend slot (one entry holds packets, bytes and connections):
        // every balanced packet is counted on its backend, every new
        // connection once, and the bytes are the frames' lengths.
        let bstats = inst.backend_stats().unwrap();
        let sum = |f: fn(&abi::LbBcount) -> u64| bstats.iter().map(f).sum::<u64>();
        assert_eq!(
            sum(|c| c.conns),
            expect[abi::STAT_NEW as usize],
            "new connections per backend"
        );
        assert_eq!(
            sum(|c| c.packets),
            expect[abi::STAT_NEW as usize] + expect[abi::STAT_TRACKED as usize],
            "packets per backend"
        );
        assert_eq!(
            sum(|c| c.bytes),
            (after[abi::STAT_NEW as usize].bytes - before[abi::STAT_NEW as usize].bytes)
                + (after[abi::STAT_TRACKED as usize].bytes
                    - before[abi::STAT_TRACKED as usize].bytes),
            "bytes per backend"
        );

        // Byte for byte: the output frames equal frames built from scratch
        // (so incremental checksums equal recomputed ones).
        let v4_ttl = |src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, seg: &[u8]| {
            let o = pkt::V4Opts {
                ttl,
                ..Default::default()
            };
            pkt::ipv4_with(src, dst, 6, &o, seg)
        };
        let exact: Vec<(&str, &str, Vec<u8>, Vec<u8>)> = vec![
            (
                "NAT v4 SYN",
                "cli",
                pkt::tcp4_frame(cli, vip, 45000, 80, syn, b"hello"),
                pkt::ethernet(BACKEND_MAC, be1_mac, &[], pkt::ETH_P_IP, &v4_ttl(cli, be, 63, &pkt::tcp(Ips::V4(cli, be), 45000, 8080, syn, 1, 0, b"hello"))),
            ),
            (
                "NAT v4 reply",
                "be1",
                pkt::tcp4_frame(be, cli, 8080, 45000, syn | ack, b"world"),
                pkt::ethernet(CLIENT_MAC, cli_mac, &[], pkt::ETH_P_IP, &v4_ttl(vip, cli, 63, &pkt::tcp(Ips::V4(vip, cli), 80, 45000, syn | ack, 1, 0, b"world"))),
            ),
            (
                "DSR v4",
                "cli",
                pkt::tcp4_frame(cli, v4("10.200.0.30"), 45001, 8080, syn, b""),
                pkt::ethernet(BACKEND_MAC, be1_mac, &[], pkt::ETH_P_IP, &v4_ttl(cli, v4("10.200.0.30"), 64, &pkt::tcp(Ips::V4(cli, v4("10.200.0.30")), 45001, 8080, syn, 1, 0, b""))),
            ),
            ("NAT v6 SYN", "cli", pkt::tcp6_frame(cli6, vip6, 45002, 80, syn, b"six"), {
                let mut ip = pkt::ipv6(cli6, be6, 6, &pkt::tcp(Ips::V6(cli6, be6), 45002, 8080, syn, 1, 0, b"six"));
                ip[7] = 63; // hop limit
                pkt::ethernet(BACKEND_MAC, be1_mac, &[], pkt::ETH_P_IPV6, &ip)
            }),
            (
                "UDP NAT",
                "cli",
                pkt::udp4_frame(cli, vip, 45003, 53, b"q?"),
                pkt::ethernet(BACKEND_MAC, be1_mac, &[], pkt::ETH_P_IP, &{
                    let o = pkt::V4Opts {
                        ttl: 63,
                        ..Default::default()
                    };
                    pkt::ipv4_with(cli, be, 17, &o, &pkt::udp(Ips::V4(cli, be), 45003, 53, b"q?"))
                }),
            ),
        ];
        for (name, ifname, frame, want) in exact {
            let (ret, out) = inst.run(&frame, Some(ifindex(ifname).unwrap())).unwrap();
            assert_eq!(ret, XDP_REDIRECT, "{name}");
            assert_eq!(
                pkt::hex(&out),
                pkt::hex(&want),
                "{name}: output frame (left) differs from the frame built from scratch (right)"
            );
        }

        // A backend removed from the file loses its connections: the next
        // config (web's backend replaced) runs as a new instance over the
        // same shared maps; the tracked connection is balanced again.
        let next_yaml = CONFIG.replace(
            "name: web, vip: 10.200.0.10, port: 80, proto: tcp, backends: [{ address: 10.197.1.2, port: 8080 }]",
            "name: web, vip: 10.200.0.10, port: 80, proto: tcp, backends: [{ address: 10.197.1.3, port: 8080 }]",
        );
        assert_ne!(next_yaml, CONFIG);
        let next = core::parse(&next_yaml, std::path::Path::new("next.yaml")).unwrap();
        let running = encode::Running {
            services: enc.services.clone(),
            backends: enc.backends.clone(),
            table: enc.table,
        };
        let none = |_: &str, _: BackendId| None;
        let enc2 = encode::encode(&next, &next.services, &running, 2, &none).unwrap();
        assert_eq!(enc2.drop_backends.len(), 1, "web's old backend slot is dropped");
        let mut inst2 = LbInstance::load(&enc2, 65536, &pins, &LogOpts::default()).unwrap();
        inst2.write_shared(&enc2).unwrap();
        inst2.drop_shared(&enc2).unwrap();
        let before = inst2.stats().unwrap();
        let tracked = pkt::tcp4_frame(cli, vip, 40000, 80, ack, b"more");
        let (ret, out) = inst2.run(&tracked, Some(ifindex("cli").unwrap())).unwrap();
        assert_eq!(ret, XDP_REDIRECT);
        let d = pkt::decode(&out).unwrap();
        assert_eq!((d.dst, d.dport), (v4("10.197.1.3").into(), 8080), "the connection moved to the new backend");
        let after = inst2.stats().unwrap();
        assert_eq!(after[abi::STAT_RESELECT as usize].packets - before[abi::STAT_RESELECT as usize].packets, 1);
        // A drained backend keeps them (the same connection, its new backend drained).
        let drain = |_: &str, b: BackendId| (b.addr == IpAddr::from(v4("10.197.1.3"))).then_some(State::Drain);
        let running2 = encode::Running {
            services: enc2.services.clone(),
            backends: enc2.backends.clone(),
            table: enc2.table,
        };
        let enc3 = encode::encode(&next, &next.services, &running2, 3, &drain).unwrap();
        let mut inst3 = LbInstance::load(&enc3, 65536, &pins, &LogOpts::default()).unwrap();
        inst3.write_shared(&enc3).unwrap();
        let (ret, out) = inst3.run(&tracked, Some(ifindex("cli").unwrap())).unwrap();
        assert_eq!(ret, XDP_REDIRECT);
        assert_eq!(pkt::decode(&out).unwrap().dst, IpAddr::from(v4("10.197.1.3")), "drain keeps the connection");
        let fresh = pkt::tcp4_frame(cli, vip, 40999, 80, syn, b"");
        let (ret, _) = inst3.run(&fresh, Some(ifindex("cli").unwrap())).unwrap();
        assert_eq!(ret, XDP_DROP, "its only backend drained: a new connection has none");

        // Health's on_down: a backend taken down keeps its connections by
        // default (keep: drain); with `on_down: reset` they are balanced
        // again at their next packet.
        let pins_r = pin_dir(&format!("{tag}r"));
        let _pgr = PinGuard(pins_r.clone());
        let yaml = "services:
  - { name: rs, vip: 10.200.0.40, port: 80, proto: tcp, health: { tcp: 8080, on_down: reset },
      backends: [{ address: 10.197.1.2, port: 8080 }, { address: 10.197.1.3, port: 8080 }] }
  - { name: kp, vip: 10.200.0.41, port: 80, proto: tcp, health: { tcp: 8080 },
      backends: [{ address: 10.197.1.2, port: 8080 }, { address: 10.197.1.3, port: 8080 }] }
";
        let cfg = core::parse(yaml, std::path::Path::new("reset.yaml")).unwrap();
        assert!(cfg.services[0].reset_on_down && !cfg.services[1].reset_on_down);
        let enc_a = encode::encode(&cfg, &cfg.services, &encode::Running::default(), 1, &none).unwrap();
        let mut ia = LbInstance::load(&enc_a, 65536, &pins_r, &LogOpts::default()).unwrap();
        ia.write_shared(&enc_a).unwrap();
        ia.allow_iface(ifindex("cli").unwrap()).unwrap();
        let mut first = Vec::new();
        for (svc_vip, port) in [("10.200.0.40", 41000u16), ("10.200.0.41", 41001)] {
            let syn_f = pkt::tcp4_frame(cli, v4(svc_vip), port, 80, syn, b"");
            let (ret, out) = ia.run(&syn_f, Some(ifindex("cli").unwrap())).unwrap();
            assert_eq!(ret, XDP_REDIRECT, "{svc_vip}");
            first.push(pkt::decode(&out).unwrap().dst);
        }
        let running_a = encode::Running {
            services: enc_a.services.clone(),
            backends: enc_a.backends.clone(),
            table: enc_a.table,
        };
        let (rs_b, kp_b) = (first[0], first[1]);
        let down = move |s: &str, b: BackendId| {
            ((s == "rs" && b.addr == rs_b) || (s == "kp" && b.addr == kp_b)).then_some(State::Down)
        };
        // The flag is in the kernel: the services read back keep it.
        assert!(encode::services_of(&running_a).iter().any(|s| s.name == "rs" && s.reset_on_down));
        let enc_b = encode::encode(&cfg, &cfg.services, &running_a, 2, &down).unwrap();
        let mut ib = LbInstance::load(&enc_b, 65536, &pins_r, &LogOpts::default()).unwrap();
        ib.write_shared(&enc_b).unwrap();
        let before = ib.stats().unwrap();
        let mut now = Vec::new();
        for (svc_vip, port) in [("10.200.0.40", 41000u16), ("10.200.0.41", 41001)] {
            let ack_f = pkt::tcp4_frame(cli, v4(svc_vip), port, 80, ack, b"x");
            let (ret, out) = ib.run(&ack_f, Some(ifindex("cli").unwrap())).unwrap();
            assert_eq!(ret, XDP_REDIRECT, "{svc_vip}");
            now.push(pkt::decode(&out).unwrap().dst);
        }
        assert_ne!(now[0], first[0], "on_down: reset: the connection left its down backend");
        assert_eq!(now[1], first[1], "on_down: keep (default): the connection stays (drain)");
        let after = ib.stats().unwrap();
        assert_eq!(after[abi::STAT_RESELECT as usize].packets - before[abi::STAT_RESELECT as usize].packets, 1);
    })
    .join()
    .unwrap();
    drop(lab);
}

/// ≥ 100k random connections over random backend sets, weights, states and
/// hash fields: the backend the kernel picks is the one moat-core's
/// reference picks.
#[test]
fn lb_choice_matches_reference() {
    if !common::privileged("lb_choice_matches_reference") {
        return;
    }
    let tag = common::tag("lbdf");
    let pins = pin_dir(&tag);
    let _pg = PinGuard(pins.clone());
    let mut rng = SmallRng::seed_from_u64(0x6d6f6174);
    let mut total = 0usize;
    let mut dropped = 0usize;
    moat_host::sys::ensure_bpffs().unwrap();
    for round in 0..25 {
        let n = rng.gen_range(1..=60usize);
        let is6 = round % 5 == 4;
        let mut backends = String::new();
        for i in 0..n {
            let w = rng.gen_range(0..=4);
            let a = if is6 {
                format!("\"fd00:197::{:x}\"", i + 2)
            } else {
                format!("10.197.{}.{}", i / 200, i % 200 + 2)
            };
            backends.push_str(&format!("      - {{ address: {a}, weight: {w} }}\n"));
        }
        let fields: Vec<&str> = core::HASH_FIELDS
            .iter()
            .filter(|_| rng.gen_bool(0.6))
            .map(|(n, _)| *n)
            .collect();
        let hash = if fields.is_empty() {
            String::new()
        } else {
            format!("    hash: [{}]\n", fields.join(", "))
        };
        let vip = if is6 {
            "\"fd00:200::10\""
        } else {
            "10.200.0.10"
        };
        let yaml = format!(
            "maglev: {{ table: 7919 }}\nservices:\n  - name: svc\n    vip: {vip}\n    port: 80\n    proto: tcp\n{hash}    backends:\n{backends}"
        );
        let cfg = core::parse(&yaml, std::path::Path::new("random.yaml")).unwrap();
        // Random states: some backends down or draining.
        let svc = &cfg.services[0];
        let states: Vec<State> = svc
            .backends
            .iter()
            .map(|_| match rng.gen_range(0..10) {
                0 => State::Down,
                1 => State::Drain,
                _ => State::Up,
            })
            .collect();
        let ids: Vec<BackendId> = svc.backends.iter().map(|b| b.id()).collect();
        let st = {
            let ids = ids.clone();
            let states = states.clone();
            move |_: &str, b: BackendId| ids.iter().position(|x| *x == b).map(|i| states[i])
        };
        let enc = encode::encode(&cfg, &cfg.services, &encode::Running::default(), 1, &st).unwrap();
        let members: Vec<(BackendId, u32, State)> = svc
            .backends
            .iter()
            .zip(&states)
            .map(|(b, s)| (b.id(), b.weight, *s))
            .collect();
        let table = core::service_table(&members, cfg.table);
        let _ = std::fs::remove_dir_all(&pins);
        let mut inst = LbInstance::load(&enc, 1 << 17, &pins, &LogOpts::default()).unwrap();
        inst.write_shared(&enc).unwrap();
        // Test runs without a context arrive on lo (ifindex 1).
        inst.allow_iface(1).unwrap();
        for _ in 0..4000 {
            let (src, dst): (IpAddr, IpAddr) = if is6 {
                let mut b = [0u8; 16];
                rng.fill(&mut b[..]);
                b[0] = 0xfd;
                (Ipv6Addr::from(b).into(), v6("fd00:200::10").into())
            } else {
                (
                    Ipv4Addr::from(rng.r#gen::<u32>() | 0x0100_0000).into(),
                    v4("10.200.0.10").into(),
                )
            };
            let sport = rng.gen_range(1024..65535u16);
            let frame = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    pkt::tcp4_frame(s, d, sport, 80, pkt::TCP_SYN, b"")
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    pkt::tcp6_frame(s, d, sport, 80, pkt::TCP_SYN, b"")
                }
                _ => unreachable!(),
            };
            let flow = core::hash::Flow {
                src,
                dst,
                sport,
                dport: 80,
                proto: 6,
            };
            let h = core::hash::flow_hash(&flow, svc.hash);
            let want = table[(h % cfg.table) as usize];
            let (ret, out) = inst.run(&frame, None).unwrap();
            total += 1;
            if want == core::maglev::NONE {
                assert_eq!(
                    ret, XDP_DROP,
                    "round {round}: no eligible backend must drop"
                );
                dropped += 1;
                continue;
            }
            let d = pkt::decode(&out).unwrap();
            assert_eq!(
                d.dst, members[want as usize].0.addr,
                "round {round}: {flow:?} hash {h:#x}: kernel and reference disagree"
            );
        }
        drop(inst);
    }
    assert!(total >= 100_000, "{total}");
    eprintln!("{total} connections compared, {dropped} with no eligible backend");
}
