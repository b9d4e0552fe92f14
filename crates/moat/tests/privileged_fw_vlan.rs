//! No frame passes the firewall unjudged: VLAN tag stacks of any depth (Linux
//! strips VID-0 tags at any depth and delivers the IP packet inside; tagged
//! frames for a VLAN device are delivered there) are judged by the policy or,
//! deeper than the parser follows, dropped with their own reason. Checked by
//! what the kernel behind the firewall actually delivers to a listener.

mod common;

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use common::{FwRoot, policy_file};
use moat_core::packet::*;
use moat_host::{
    netlab::{self, Lab, LabConfig},
    sys::NetnsGuard,
};

const POLICY: &str = "
default: { ingress: deny, egress: allow }
rules:
  - name: open
    direction: ingress
    action: allow
    proto: udp
    ports: [7001]
";

const ALLOWED: u16 = 7001;
const DENIED: u16 = 7009;

/// UDP sockets bound in namespace `ns` on every address, one per port.
fn listeners(ns: &str, ports: &[u16]) -> Vec<UdpSocket> {
    let ns = ns.to_string();
    let ports = ports.to_vec();
    std::thread::spawn(move || {
        let _g = NetnsGuard::enter(&ns).unwrap();
        let mut out = Vec::new();
        for p in ports {
            for bind in [format!("0.0.0.0:{p}"), format!("[::]:{p}")] {
                let s = socket2::Socket::new(
                    if bind.starts_with('[') {
                        socket2::Domain::IPV6
                    } else {
                        socket2::Domain::IPV4
                    },
                    socket2::Type::DGRAM,
                    None,
                )
                .unwrap();
                if bind.starts_with('[') {
                    s.set_only_v6(true).unwrap();
                }
                s.bind(&bind.parse::<SocketAddr>().unwrap().into()).unwrap();
                let u: UdpSocket = s.into();
                u.set_nonblocking(true).unwrap();
                out.push(u);
            }
        }
        out
    })
    .join()
    .unwrap()
}

/// Payloads received so far on any of the sockets.
fn drain(socks: &[UdpSocket], into: &mut HashSet<String>) {
    let mut buf = [0u8; 256];
    for s in socks {
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            into.insert(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

struct Case {
    label: String,
    frame: Vec<u8>,
    /// Would Linux deliver it to the listener without a firewall?
    deliverable: bool,
    /// The port the datagram goes to.
    port: u16,
}

fn tags(tpids: &[u16], vids: &[u16]) -> Vec<(u16, u16)> {
    tpids.iter().copied().zip(vids.iter().copied()).collect()
}

#[test]
fn vlan_stacks_of_any_depth_are_judged_or_dropped() {
    if !common::privileged("vlan_stacks_of_any_depth_are_judged_or_dropped") {
        return;
    }
    let t = common::tag("vlan");
    let lab = Lab::create(&t, &LabConfig::default()).expect("creating lab");
    // A VLAN device on b: tagged frames with VID 100 (inside any number of
    // VID-0 tags) are delivered there. Kernels without 802.1Q devices
    // (CONFIG_VLAN_8021Q off) deliver only VID-0 stacks; say so and test those.
    let vlan_dev = netlab::ip(&[
        "-n", &lab.ns_b, "link", "add", "link", &lab.if_b, "name", "vl100", "type", "vlan", "id",
        "100",
    ])
    .is_ok();
    if vlan_dev {
        netlab::ip(&[
            "-n",
            &lab.ns_b,
            "addr",
            "add",
            "10.199.100.2/24",
            "dev",
            "vl100",
        ])
        .unwrap();
        netlab::ip(&["-n", &lab.ns_b, "link", "set", "vl100", "up"]).unwrap();
    } else {
        eprintln!(
            "NOTE: this kernel has no 802.1Q devices (ip link add type vlan fails): the VID-100 cases are left out; VID-0 stacks (stripped by the core at any depth) are all tested"
        );
    }
    let root = FwRoot::new(&t);
    let socks = listeners(&lab.ns_b, &[ALLOWED, DENIED]);

    let (a4, b4): (Ipv4Addr, Ipv4Addr) = (netlab::A4.parse().unwrap(), netlab::B4.parse().unwrap());
    let (a6, b6): (Ipv6Addr, Ipv6Addr) = (netlab::A6.parse().unwrap(), netlab::B6.parse().unwrap());
    let (va4, vb4) = (
        Ipv4Addr::new(10, 199, 100, 1),
        Ipv4Addr::new(10, 199, 100, 2),
    );

    let mut cases = Vec::new();
    let mut n = 0;
    let mut add = |label: String, vlans: Vec<(u16, u16)>, dst: IpAddr, port: u16, deliverable| {
        n += 1;
        let text = format!("{n}:{label}:{port}");
        let frame = match dst {
            IpAddr::V4(d) => {
                let src = if d == vb4 { va4 } else { a4 };
                ethernet(
                    lab.mac_b,
                    lab.mac_a,
                    &vlans,
                    ETH_P_IP,
                    &ipv4(
                        src,
                        d,
                        IPPROTO_UDP,
                        &udp(Ips::V4(src, d), 40000 + n, port, text.as_bytes()),
                    ),
                )
            }
            IpAddr::V6(d) => ethernet(
                lab.mac_b,
                lab.mac_a,
                &vlans,
                ETH_P_IPV6,
                &ipv6(
                    a6,
                    d,
                    IPPROTO_UDP,
                    &udp(Ips::V6(a6, d), 40000 + n, port, text.as_bytes()),
                ),
            ),
        };
        cases.push(Case {
            label: text.clone(),
            frame,
            deliverable,
            port,
        });
        text
    };
    let q = ETH_P_8021Q;
    let ad = ETH_P_8021AD;
    for depth in 0..=6usize {
        let mixes: Vec<(&str, Vec<u16>)> = vec![
            ("8100", vec![q; depth]),
            ("88a8", vec![ad; depth]),
            (
                "mixed",
                (0..depth)
                    .map(|i| if i % 2 == 0 { ad } else { q })
                    .collect(),
            ),
        ];
        for (mix, tpids) in mixes {
            if depth == 0 && mix != "8100" {
                continue;
            }
            for dst in [IpAddr::V4(b4), IpAddr::V6(b6)] {
                for port in [ALLOWED, DENIED] {
                    // VID 0 everywhere: Linux strips every tag.
                    let _ = add(
                        format!("depth{depth}-{mix}-vid0-{dst}"),
                        tags(&tpids, &vec![0; depth]),
                        dst,
                        port,
                        true,
                    );
                    if depth >= 1 {
                        // VID-0 tags around VID 100 (the VLAN device's).
                        let mut vids = vec![0u16; depth];
                        vids[depth - 1] = 100;
                        let mut tp = tpids.clone();
                        tp[depth - 1] = q; // vl100 is an 802.1Q device
                        if vlan_dev && dst.is_ipv4() {
                            add(
                                format!("depth{depth}-{mix}-vid100"),
                                tags(&tp, &vids),
                                IpAddr::V4(vb4),
                                port,
                                true,
                            );
                        }
                        // A VID no device has: Linux drops it (other host).
                        let mut vids = vec![0u16; depth];
                        vids[0] = 7;
                        add(
                            format!("depth{depth}-{mix}-vid7-{dst}"),
                            tags(&tpids, &vids),
                            dst,
                            port,
                            false,
                        );
                    }
                }
            }
        }
    }
    // Deeper than the parser follows (MOAT_MAX_VLAN_DEPTH = 8): dropped, even
    // to the allowed port, and counted.
    let deep = moat_abi::parse::MAX_VLAN_DEPTH + 1;
    let mut deep_labels = HashSet::new();
    for dst in [IpAddr::V4(b4), IpAddr::V6(b6)] {
        deep_labels.insert(add(
            format!("depth{deep}-vid0-{dst}"),
            tags(&vec![q; deep], &vec![0; deep]),
            dst,
            ALLOWED,
            true,
        ));
    }

    let send_all = |cases: &[Case]| -> HashSet<String> {
        let frames: Vec<Vec<u8>> = cases.iter().map(|c| c.frame.clone()).collect();
        moat_host::traffic::send_frames(&lab.ns_a, &lab.if_a, &frames).unwrap();
        let mut got = HashSet::new();
        let deadline = Instant::now() + Duration::from_millis(800);
        while Instant::now() < deadline {
            drain(&socks, &mut got);
            std::thread::sleep(Duration::from_millis(20));
        }
        got
    };

    // Without a firewall: the kernel delivers exactly what the table says
    // (this checks the table, and that the lab can carry such frames).
    let got = send_all(&cases);
    // Stacks deeper than the parser follows: kernels differ (some builds
    // strip VID-0 tags at any depth, some stop); what this one does is
    // printed, and either way the firewall must drop and count them.
    for c in cases.iter_mut().filter(|c| deep_labels.contains(&c.label)) {
        let delivered = got.contains(&c.label);
        eprintln!(
            "note: without a firewall this kernel {} {}",
            if delivered {
                "delivers"
            } else {
                "does not deliver"
            },
            c.label
        );
        c.deliverable = delivered;
    }
    for c in &cases {
        assert_eq!(
            got.contains(&c.label),
            c.deliverable,
            "without a firewall, {} {}",
            c.label,
            if c.deliverable {
                "should have been delivered"
            } else {
                "should not have been delivered"
            }
        );
    }

    // With the firewall: nothing to the denied port arrives, whatever the
    // tags; what Linux delivers to the allowed port still arrives, up to the
    // parser's depth; deeper stacks are dropped and counted.
    root.apply(&lab, &policy_file(&t, POLICY));
    std::thread::sleep(Duration::from_millis(200));
    let before = root.reason("drop_vlan_depth");
    let got = send_all(&cases);
    for c in &cases {
        let want = c.deliverable && c.port == ALLOWED && !deep_labels.contains(&c.label);
        assert_eq!(
            got.contains(&c.label),
            want,
            "behind the firewall, {} {}",
            c.label,
            if want {
                "should have been delivered"
            } else {
                "got through"
            }
        );
    }
    assert_eq!(
        root.reason("drop_vlan_depth") - before,
        deep_labels.len() as u64,
        "stacks deeper than the parser follows are counted as drop_vlan_depth"
    );
}
