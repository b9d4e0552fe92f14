//! Reference model of the packet counter's classification.
//!
//! Written from the rules below, independently of `bpf/common/parse.h`; the
//! privileged tests feed random frames to both and require equal answers.
//!
//! Rules:
//! * fewer than 14 bytes: `other`.
//! * up to eight 802.1Q (0x8100) / 802.1ad (0x88A8) tags are skipped; a cut
//!   tag: `other`; a ninth tag: `vlan_too_deep` (Linux strips VID-0 tags at any
//!   depth, so what is inside may well be IP).
//! * ethertype 0x0806: `arp`.
//! * 0x0800: the whole IPv4 header including options must be present with
//!   version 4 and IHL >= 5, else `ipv4_other`; then by protocol field
//!   (6 tcp, 17 udp, 1 icmp, else other). Fragments keep their protocol.
//! * 0x86DD: the 40-byte header must be present with version 6, else
//!   `ipv6_other`; extension headers (0, 43, 44, 51, 60, 135, 139, 140) are
//!   walked, at most 8; a cut or ninth extension header gives `ipv6_other`.
//!   A non-first fragment is classed by its fragment header's next header.
//!   Then 6 tcp, 17 udp, 58 icmp, else other.
//! * anything else: `other`.

use moat_abi::count::*;
use moat_abi::parse::{MAX_IPV6_EXTHDRS, MAX_VLAN_DEPTH};

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The class index (`moat_abi::count::CLASS_*`) of an Ethernet frame.
pub fn classify(frame: &[u8]) -> u32 {
    let Some(mut ethertype) = be16(frame, 12) else {
        return CLASS_OTHER;
    };
    let mut at = 14;
    let mut tags = 0;
    while ethertype == 0x8100 || ethertype == 0x88A8 {
        if tags == MAX_VLAN_DEPTH {
            return CLASS_VLAN_TOO_DEEP;
        }
        match be16(frame, at + 2) {
            Some(t) => ethertype = t,
            None => return CLASS_OTHER,
        }
        at += 4;
        tags += 1;
    }
    let l3 = &frame[at.min(frame.len())..];
    match ethertype {
        0x0806 => CLASS_ARP,
        0x0800 => match ipv4_proto(l3) {
            Some(6) => CLASS_IPV4_TCP,
            Some(17) => CLASS_IPV4_UDP,
            Some(1) => CLASS_IPV4_ICMP,
            _ => CLASS_IPV4_OTHER,
        },
        0x86DD => match ipv6_proto(l3) {
            Some(6) => CLASS_IPV6_TCP,
            Some(17) => CLASS_IPV6_UDP,
            Some(58) => CLASS_IPV6_ICMP,
            _ => CLASS_IPV6_OTHER,
        },
        _ => CLASS_OTHER,
    }
}

fn ipv4_proto(p: &[u8]) -> Option<u8> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0F) * 4;
    if ihl < 20 || p.len() < ihl {
        return None;
    }
    Some(p[9])
}

fn ipv6_proto(p: &[u8]) -> Option<u8> {
    if p.len() < 40 || p[0] >> 4 != 6 {
        return None;
    }
    let mut next = p[6];
    let mut rest = &p[40..];
    for _ in 0..MAX_IPV6_EXTHDRS {
        let len = match next {
            0 | 43 | 60 | 135 | 139 | 140 => {
                if rest.len() < 8 {
                    return None;
                }
                (usize::from(rest[1]) + 1) * 8
            }
            51 => {
                if rest.len() < 8 {
                    return None;
                }
                (usize::from(rest[1]) + 2) * 4
            }
            44 => {
                if rest.len() < 8 {
                    return None;
                }
                let offset = u16::from_be_bytes([rest[2], rest[3]]) >> 3;
                if offset != 0 {
                    return Some(rest[0]);
                }
                8
            }
            upper => return Some(upper),
        };
        next = rest[0];
        // The header may claim more bytes than the frame has; the next
        // iteration then sees an empty rest (a cut header) or the upper layer.
        rest = &rest[len.min(rest.len())..];
    }
    match next {
        0 | 43 | 44 | 51 | 60 | 135 | 139 | 140 => None,
        upper => Some(upper),
    }
}

/// Name of a class index.
pub fn class_name(class: u32) -> &'static str {
    CLASS_NAMES.get(class as usize).copied().unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

    #[test]
    fn basic_classes() {
        assert_eq!(
            classify(&tcp4_frame(A4, B4, 1, 2, TCP_SYN, &[])),
            CLASS_IPV4_TCP
        );
        assert_eq!(classify(&udp4_frame(A4, B4, 1, 2, &[])), CLASS_IPV4_UDP);
        assert_eq!(
            classify(&tcp6_frame(A6, B6, 1, 2, TCP_SYN, &[])),
            CLASS_IPV6_TCP
        );
        assert_eq!(
            classify(&eth(ETH_P_ARP, &arp_request(MAC_SRC, A4, B4))),
            CLASS_ARP
        );
        assert_eq!(classify(&[0u8; 13]), CLASS_OTHER);
    }

    #[test]
    fn ipv6_exthdrs_walked() {
        let seg = udp(Ips::V6(A6, B6), 1, 2, &[]);
        let p = ipv6_ext(IPPROTO_ROUTING, &[], &ipv6_ext(IPPROTO_UDP, &[], &seg));
        let f = eth(ETH_P_IPV6, &ipv6(A6, B6, IPPROTO_HOPOPTS, &p));
        assert_eq!(classify(&f), CLASS_IPV6_UDP);
        // cut inside the routing header
        assert_eq!(classify(&f[..14 + 40 + 8 + 4]), CLASS_IPV6_OTHER);
    }

    #[test]
    fn ipv4_truncated_options_are_other() {
        let o = V4Opts {
            options: vec![1, 1, 1, 0],
            ..Default::default()
        };
        let f = eth(ETH_P_IP, &ipv4_with(A4, B4, IPPROTO_TCP, &o, &[]));
        assert_eq!(classify(&f), CLASS_IPV4_TCP);
        assert_eq!(classify(&f[..14 + 22]), CLASS_IPV4_OTHER);
    }
}
