//! The firewall's pure logic: the policy language ([`policy`]), the compiler
//! that turns a policy into BPF map entries ([`compile`]), and the reference
//! classifier that states the semantics naively, rule by rule ([`reference`]).
//! The compiler and the reference share no code but the policy model.

pub mod addr;
pub mod compile;
pub mod encode;
pub mod flowspec;
pub mod policy;
#[cfg(any(test, feature = "random"))]
pub mod random;
pub mod reference;

pub use addr::Cidr;
pub use policy::{Action, Dir, Policy, PolicyError, Proto, Rule};

/// A new connection's first packet, as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub dir: Dir,
    /// The peer: source on ingress, destination on egress.
    pub remote: std::net::IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// tcp/udp: destination port; icmp/icmpv6: type << 8 | code; else 0.
    pub port: u16,
}

/// A verdict and the rule that decided it (`None`: the direction's default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// Index into `Policy::rules`.
    pub rule: Option<usize>,
}

/// The host's own address in frames built for a flow (any address works:
/// the policy looks at the remote side only).
pub const LOCAL_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(100, 64, 0, 1);
pub const LOCAL_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 1);

/// An Ethernet frame carrying `flow`'s first packet: from the remote on
/// ingress, to it on egress, with the host at [`LOCAL_V4`]/[`LOCAL_V6`];
/// `sport` is the sender's port (tcp/udp) or echo identifier (icmp).
pub fn frame_for(flow: &Flow, sport: u16) -> Vec<u8> {
    use std::net::IpAddr;
    let local = match flow.remote {
        IpAddr::V4(_) => IpAddr::V4(LOCAL_V4),
        IpAddr::V6(_) => IpAddr::V6(LOCAL_V6),
    };
    let (src, dst) = match flow.dir {
        Dir::Ingress => (flow.remote, local),
        Dir::Egress => (local, flow.remote),
    };
    frame_between(src, dst, flow.proto, sport, flow.port)
}

/// An Ethernet frame from `src` to `dst` (same family): tcp SYN / udp
/// datagram from `sport` to `port`, or icmp/icmpv6 of type `port >> 8`, code
/// `port & 0xff` with identifier `sport`, or 8 bytes of another protocol.
pub fn frame_between(
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    proto: u8,
    sport: u16,
    port: u16,
) -> Vec<u8> {
    use crate::packet::*;
    use std::net::IpAddr;
    let ips = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Ips::V4(s, d),
        (IpAddr::V6(s), IpAddr::V6(d)) => Ips::V6(s, d),
        _ => panic!("frame_between: {src} and {dst} are of different families"),
    };
    let l4 = match proto {
        IPPROTO_TCP => tcp(ips, sport, port, TCP_SYN, 1, 0, &[]),
        IPPROTO_UDP => udp(ips, sport, port, b"moat"),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let (ty, code) = ((port >> 8) as u8, port as u8);
            let mut rest = [0u8; 4];
            rest[..2].copy_from_slice(&sport.to_be_bytes());
            match ips {
                Ips::V6(s, d) if proto == IPPROTO_ICMPV6 => icmpv6(s, d, ty, code, rest, &[0; 8]),
                _ => icmpv4(ty, code, rest, &[0; 8]),
            }
        }
        _ => vec![0u8; 8],
    };
    match ips {
        Ips::V4(s, d) => eth(ETH_P_IP, &ipv4(s, d, proto, &l4)),
        Ips::V6(s, d) => eth(ETH_P_IPV6, &ipv6(s, d, proto, &l4)),
    }
}
