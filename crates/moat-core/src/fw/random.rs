//! Random policies and flows for differential testing: policies are written
//! as YAML (so the parser is exercised too), with overlapping v4/v6 prefixes,
//! excepts, sets, port ranges at the 0/1/1023/1024/65535 edges, ICMP types,
//! allow/deny mixes and both defaults. Flows aim at the edges.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::{Rng, seq::SliceRandom};

use super::{Dir, Flow, addr::Cidr};

/// Prefixes that nest and overlap, the material of random rules.
pub const V4_POOL: &[&str] = &[
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.3/32",
    "10.1.2.128/25",
    "10.200.0.0/13",
    "192.0.2.0/24",
    "192.0.2.0/25",
    "192.0.2.255/32",
    "198.51.100.0/22",
    "203.0.113.0/24",
];
pub const V6_POOL: &[&str] = &[
    "::/0",
    "2001:db8::/32",
    "2001:db8:1::/48",
    "2001:db8:1:2::/64",
    "2001:db8:1:2::3/128",
    "2001:db8:ff00::/40",
    "fd00::/8",
    "fd00:1::/32",
];
const PORT_EDGES: &[u32] = &[
    1, 2, 22, 53, 80, 443, 1023, 1024, 1025, 8080, 32768, 65534, 65535,
];
const ICMP_TYPES: &[&str] = &[
    "echo-request",
    "echo-reply",
    "destination-unreachable",
    "time-exceeded",
    "3",
    "8",
    "128",
    "135",
];

fn pick_prefixes(rng: &mut impl Rng, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let pool = if rng.gen_bool(0.6) { V4_POOL } else { V6_POOL };
            format!("{:?}", pool.choose(rng).unwrap())
        })
        .collect()
}

fn port_item(rng: &mut impl Rng) -> String {
    let a = *PORT_EDGES.choose(rng).unwrap();
    if rng.gen_bool(0.5) {
        a.to_string()
    } else {
        let b = *PORT_EDGES.choose(rng).unwrap();
        format!("\"{}-{}\"", a.min(b), a.max(b))
    }
}

/// A random policy as YAML, with `sets` given inline.
pub fn policy_yaml(rng: &mut impl Rng) -> String {
    let mut y = String::new();
    let d = |rng: &mut dyn rand::RngCore| if rng.gen_bool(0.5) { "allow" } else { "deny" };
    y.push_str(&format!(
        "default:\n  ingress: {}\n  egress: {}\n",
        d(rng),
        d(rng)
    ));
    let nsets = rng.gen_range(0..3);
    if nsets > 0 {
        y.push_str("sets:\n");
        for s in 0..nsets {
            let k = rng.gen_range(1..4);
            let items = pick_prefixes(rng, k);
            y.push_str(&format!("  s{s}: [{}]\n", items.join(", ")));
        }
    }
    y.push_str("rules:\n");
    for i in 0..rng.gen_range(1..10) {
        y.push_str(&format!("  - name: r{i}\n"));
        y.push_str(&format!(
            "    direction: {}\n",
            if rng.gen_bool(0.5) {
                "ingress"
            } else {
                "egress"
            }
        ));
        y.push_str(&format!("    action: {}\n", d(rng)));
        if rng.gen_bool(0.75) {
            let k = rng.gen_range(1..4);
            let mut items = pick_prefixes(rng, k);
            if nsets > 0 && rng.gen_bool(0.3) {
                items.push(format!("\"@s{}\"", rng.gen_range(0..nsets)));
            }
            y.push_str(&format!("    remote: [{}]\n", items.join(", ")));
        }
        if rng.gen_bool(0.3) {
            let k = rng.gen_range(1..3);
            y.push_str(&format!(
                "    except: [{}]\n",
                pick_prefixes(rng, k).join(", ")
            ));
        }
        match rng.gen_range(0..7) {
            0 => {}
            1 => y.push_str("    proto: any\n"),
            2 | 3 => {
                let p = ["tcp", "udp", "[tcp, udp]"].choose(rng).unwrap();
                y.push_str(&format!("    proto: {p}\n"));
                if rng.gen_bool(0.7) {
                    let items: Vec<String> =
                        (0..rng.gen_range(1..4)).map(|_| port_item(rng)).collect();
                    y.push_str(&format!("    ports: [{}]\n", items.join(", ")));
                }
            }
            4 => {
                let items: Vec<String> = (0..rng.gen_range(1..3)).map(|_| port_item(rng)).collect();
                y.push_str(&format!("    ports: [{}]\n", items.join(", ")));
            }
            _ => {
                let p = ["icmp", "icmpv6", "[icmp, icmpv6]"].choose(rng).unwrap();
                y.push_str(&format!("    proto: {p}\n"));
                if rng.gen_bool(0.6) {
                    let items: Vec<&str> = (0..rng.gen_range(1..3))
                        .map(|_| *ICMP_TYPES.choose(rng).unwrap())
                        .collect();
                    y.push_str(&format!("    icmp_types: [{}]\n", items.join(", ")));
                }
            }
        }
    }
    y
}

/// An address in or near a pool prefix: its first, last or a random address,
/// or one just outside it.
pub fn address(rng: &mut impl Rng, v4: bool) -> IpAddr {
    let pool = if v4 { V4_POOL } else { V6_POOL };
    let c = Cidr::parse(pool.choose(rng).unwrap()).unwrap();
    match c {
        Cidr::V4(n, l) => {
            let size: u64 = 1u64 << (32 - u32::from(l));
            let off: i64 = match rng.gen_range(0..4) {
                0 => 0,
                1 => size as i64 - 1,
                2 => rng.gen_range(0..size) as i64,
                _ => size as i64,
            };
            IpAddr::V4(Ipv4Addr::from(
                (i64::from(n) + off).rem_euclid(1 << 32) as u32
            ))
        }
        Cidr::V6(n, l) => {
            let host_bits = 128 - u32::from(l);
            let off: u128 = match rng.gen_range(0..4) {
                0 => 0,
                1 => {
                    if host_bits == 128 {
                        u128::MAX
                    } else {
                        (1u128 << host_bits) - 1
                    }
                }
                2 => {
                    rng.r#gen::<u128>()
                        & if host_bits == 128 {
                            u128::MAX
                        } else {
                            (1u128 << host_bits) - 1
                        }
                }
                _ => {
                    if host_bits == 128 {
                        0
                    } else {
                        1u128 << host_bits
                    }
                }
            };
            IpAddr::V6(Ipv6Addr::from(n.wrapping_add(off)))
        }
    }
}

/// A random first packet.
pub fn flow(rng: &mut impl Rng) -> Flow {
    let v4 = rng.gen_bool(0.6);
    let proto = *[6u8, 6, 17, 17, 1, 58, 47, 132].choose(rng).unwrap();
    // Keep ICMP in its family, mostly.
    let proto = match (proto, v4) {
        (1, false) if rng.gen_bool(0.9) => 58,
        (58, true) if rng.gen_bool(0.9) => 1,
        (p, _) => p,
    };
    let port = match proto {
        6 | 17 => {
            let e = *PORT_EDGES.choose(rng).unwrap() as i64 + rng.gen_range(-1..=1);
            if rng.gen_bool(0.1) {
                rng.gen_range(1..=65535)
            } else {
                e.clamp(1, 65535) as u16
            }
        }
        1 | 58 => {
            let ty = *[0u8, 3, 8, 11, 128, 129, 1, 2, 13].choose(rng).unwrap();
            (u16::from(ty) << 8) | rng.gen_range(0..3)
        }
        _ => 0,
    };
    Flow {
        dir: if rng.gen_bool(0.5) {
            Dir::Ingress
        } else {
            Dir::Egress
        },
        remote: address(rng, v4),
        proto,
        port,
    }
}
