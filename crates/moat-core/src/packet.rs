//! Frame builder. Every function returns bytes in network order with correct
//! lengths and checksums, so frames built here are accepted by a real stack.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_ESP: u8 = 50;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_SCTP: u8 = 132;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// Default MAC addresses of built frames (locally administered).
pub const MAC_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const MAC_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// One's-complement sum of 16-bit words (RFC 1071), not yet inverted.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    !(acc as u16)
}

/// Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(data, 0))
}

/// An IP address of either family, for the transport pseudo-header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ips {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl Ips {
    fn pseudo_sum(&self, proto: u8, len: usize) -> u32 {
        let mut acc = 0;
        match self {
            Ips::V4(s, d) => {
                acc = sum16(&s.octets(), acc);
                acc = sum16(&d.octets(), acc);
            }
            Ips::V6(s, d) => {
                acc = sum16(&s.octets(), acc);
                acc = sum16(&d.octets(), acc);
            }
        }
        acc + u32::from(proto) + len as u32
    }
}

/// Ethernet frame with optional VLAN tags `(tpid, vid)`, outermost first.
pub fn ethernet(
    dst: [u8; 6],
    src: [u8; 6],
    vlans: &[(u16, u16)],
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * vlans.len() + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (tpid, vid) in vlans {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(vid & 0x0FFF).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Ethernet frame with the default MACs and no VLAN tag.
pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    ethernet(MAC_DST, MAC_SRC, &[], ethertype, payload)
}

/// IPv4 header fields that tests vary.
#[derive(Clone, Debug)]
pub struct V4Opts {
    pub ttl: u8,
    pub id: u16,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    pub more_fragments: bool,
    pub dont_fragment: bool,
    /// IP options, padded by the caller to a multiple of 4 bytes.
    pub options: Vec<u8>,
}

impl Default for V4Opts {
    fn default() -> Self {
        V4Opts {
            ttl: 64,
            id: 1,
            frag_offset: 0,
            more_fragments: false,
            dont_fragment: true,
            options: Vec::new(),
        }
    }
}

/// IPv4 packet (header with checksum + payload).
pub fn ipv4_with(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, o: &V4Opts, payload: &[u8]) -> Vec<u8> {
    assert!(
        o.options.len().is_multiple_of(4) && o.options.len() <= 40,
        "bad IPv4 options length"
    );
    let hlen = 20 + o.options.len();
    let total = hlen + payload.len();
    let mut p = Vec::with_capacity(total);
    p.push(0x40 | (hlen / 4) as u8);
    p.push(0);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&o.id.to_be_bytes());
    let mut frag = o.frag_offset & 0x1FFF;
    if o.more_fragments {
        frag |= 0x2000;
    }
    if o.dont_fragment {
        frag |= 0x4000;
    }
    p.extend_from_slice(&frag.to_be_bytes());
    p.push(o.ttl);
    p.push(proto);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&o.options);
    let c = checksum(&p[..hlen]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// IPv4 packet with default header fields.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_with(src, dst, proto, &V4Opts::default(), payload)
}

/// IPv6 packet: fixed header + payload (which may start with extension headers).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + payload.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.push(next_header);
    p.push(64);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// A generic IPv6 extension header (hop-by-hop, routing, destination options):
/// `body` is padded so the header is a multiple of 8 bytes.
pub fn ipv6_ext(next_header: u8, body: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut h = vec![next_header, 0];
    h.extend_from_slice(body);
    while h.len() < 8 || !h.len().is_multiple_of(8) {
        h.push(0);
    }
    h[1] = (h.len() / 8 - 1) as u8;
    h.extend_from_slice(rest);
    h
}

/// IPv6 fragment header (offset in 8-byte units) followed by `rest`.
pub fn ipv6_frag(next_header: u8, offset: u16, more: bool, id: u32, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![next_header, 0];
    let v = (offset << 3) | u16::from(more);
    h.extend_from_slice(&v.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(rest);
    h
}

/// IPv6 authentication header with `icv_words` 32-bit words of ICV.
pub fn ipv6_ah(next_header: u8, icv_words: u8, rest: &[u8]) -> Vec<u8> {
    // Length field counts 32-bit words minus 2; fixed part is 3 words.
    let words = 3 + icv_words as usize;
    let mut h = vec![next_header, (words - 2) as u8, 0, 0];
    h.extend_from_slice(&0x100u32.to_be_bytes()); // SPI
    h.extend_from_slice(&1u32.to_be_bytes()); // sequence
    h.resize(words * 4, 0);
    h.extend_from_slice(rest);
    h
}

/// TCP segment with checksum over `ips`.
pub fn tcp(
    ips: Ips,
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    data: &[u8],
) -> Vec<u8> {
    let mut s = Vec::with_capacity(20 + data.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&seq.to_be_bytes());
    s.extend_from_slice(&ack.to_be_bytes());
    s.push(5 << 4);
    s.push(flags);
    s.extend_from_slice(&65535u16.to_be_bytes());
    s.extend_from_slice(&[0, 0, 0, 0]);
    s.extend_from_slice(data);
    let c = fold(sum16(&s, ips.pseudo_sum(IPPROTO_TCP, s.len())));
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

/// UDP datagram with checksum over `ips`.
pub fn udp(ips: Ips, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let len = 8 + data.len();
    let mut s = Vec::with_capacity(len);
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&(len as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(data);
    let mut c = fold(sum16(&s, ips.pseudo_sum(IPPROTO_UDP, len)));
    if c == 0 {
        c = 0xFFFF;
    }
    s[6..8].copy_from_slice(&c.to_be_bytes());
    s
}

/// ICMPv4 message: type, code, 4 bytes of rest-of-header, data.
pub fn icmpv4(ty: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut s = vec![ty, code, 0, 0];
    s.extend_from_slice(&rest);
    s.extend_from_slice(data);
    let c = checksum(&s);
    s[2..4].copy_from_slice(&c.to_be_bytes());
    s
}

/// ICMPv6 message with the pseudo-header checksum.
pub fn icmpv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ty: u8,
    code: u8,
    rest: [u8; 4],
    data: &[u8],
) -> Vec<u8> {
    let mut s = vec![ty, code, 0, 0];
    s.extend_from_slice(&rest);
    s.extend_from_slice(data);
    let c = fold(sum16(
        &s,
        Ips::V6(src, dst).pseudo_sum(IPPROTO_ICMPV6, s.len()),
    ));
    s[2..4].copy_from_slice(&c.to_be_bytes());
    s
}

/// ARP request (Ethernet/IPv4) as an Ethernet payload.
pub fn arp_request(sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&tpa.octets());
    a
}

/// Convenience: a full IPv4/TCP frame.
pub fn tcp4_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let seg = tcp(Ips::V4(src, dst), sport, dport, flags, 1, 0, data);
    eth(ETH_P_IP, &ipv4(src, dst, IPPROTO_TCP, &seg))
}

/// Convenience: a full IPv4/UDP frame.
pub fn udp4_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let seg = udp(Ips::V4(src, dst), sport, dport, data);
    eth(ETH_P_IP, &ipv4(src, dst, IPPROTO_UDP, &seg))
}

/// Convenience: a full IPv6/TCP frame.
pub fn tcp6_frame(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let seg = tcp(Ips::V6(src, dst), sport, dport, flags, 1, 0, data);
    eth(ETH_P_IPV6, &ipv6(src, dst, IPPROTO_TCP, &seg))
}

/// Convenience: a full IPv6/UDP frame.
pub fn udp6_frame(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let seg = udp(Ips::V6(src, dst), sport, dport, data);
    eth(ETH_P_IPV6, &ipv6(src, dst, IPPROTO_UDP, &seg))
}

/// Hex dump, 16 bytes a line, for test failure messages.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        s.push_str(&format!("{:04x}:", i * 16));
        for b in line {
            s.push_str(&format!(" {b:02x}"));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let p = ipv4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            IPPROTO_UDP,
            &[1, 2, 3],
        );
        assert_eq!(
            checksum(&p[..20]),
            0,
            "a header with its checksum sums to zero"
        );
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 23);
    }

    #[test]
    fn udp_checksum_verifies_with_pseudo_header() {
        let (s, d) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
        let seg = udp(Ips::V4(s, d), 1000, 53, b"hello");
        assert_eq!(
            fold(sum16(
                &seg,
                Ips::V4(s, d).pseudo_sum(IPPROTO_UDP, seg.len())
            )),
            0
        );
    }

    #[test]
    fn ext_headers_are_multiple_of_eight() {
        let h = ipv6_ext(IPPROTO_TCP, &[1, 2, 3, 4, 5, 6, 7], &[]);
        assert_eq!(h.len(), 16);
        assert_eq!(h[1], 1);
        let a = ipv6_ah(IPPROTO_TCP, 3, &[]);
        assert_eq!(a.len(), 24);
        assert_eq!((a[1] as usize + 2) * 4, 24);
    }

    #[test]
    fn vlan_tags_are_inserted_outermost_first() {
        let f = ethernet(
            MAC_DST,
            MAC_SRC,
            &[(ETH_P_8021AD, 10), (ETH_P_8021Q, 20)],
            ETH_P_IP,
            &[],
        );
        assert_eq!(&f[12..14], &[0x88, 0xA8]);
        assert_eq!(&f[16..18], &[0x81, 0x00]);
        assert_eq!(&f[20..22], &[0x08, 0x00]);
    }
}

/// A frame as the tests check a rewritten one: addresses, ports, hop limit
/// and whether every checksum (IPv4 header, TCP/UDP/ICMP) is right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: std::net::IpAddr,
    pub dst: std::net::IpAddr,
    pub proto: u8,
    pub ttl: u8,
    /// Ports (TCP/UDP), or (type, code) for ICMP.
    pub sport: u16,
    pub dport: u16,
    pub ip_csum_ok: bool,
    pub l4_csum_ok: bool,
    /// UDP over IPv4 without a checksum (0).
    pub l4_csum_zero: bool,
}

/// Decodes an untagged Ethernet/IPv4|IPv6/TCP|UDP|ICMP frame (IPv4 options
/// allowed, IPv6 extension headers not).
pub fn decode(f: &[u8]) -> Option<Decoded> {
    if f.len() < 14 {
        return None;
    }
    let et = u16::from_be_bytes([f[12], f[13]]);
    let mut dst_mac = [0u8; 6];
    let mut src_mac = [0u8; 6];
    dst_mac.copy_from_slice(&f[..6]);
    src_mac.copy_from_slice(&f[6..12]);
    let ip = &f[14..];
    let (src, dst, proto, ttl, l4, ip_ok, pseudo): (
        std::net::IpAddr,
        std::net::IpAddr,
        u8,
        u8,
        &[u8],
        bool,
        Ips,
    ) = match et {
        ETH_P_IP => {
            let hl = ((ip.first()? & 0x0f) as usize) * 4;
            let total = u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]) as usize;
            if ip.len() < total || hl < 20 || total < hl {
                return None;
            }
            let s = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let d = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (
                s.into(),
                d.into(),
                ip[9],
                ip[8],
                &ip[hl..total],
                checksum(&ip[..hl]) == 0,
                Ips::V4(s, d),
            )
        }
        ETH_P_IPV6 => {
            if ip.len() < 40 {
                return None;
            }
            let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            let s = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).ok()?);
            let d = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).ok()?);
            if ip.len() < 40 + plen {
                return None;
            }
            (
                s.into(),
                d.into(),
                ip[6],
                ip[7],
                &ip[40..40 + plen],
                true,
                Ips::V6(s, d),
            )
        }
        _ => return None,
    };
    let (sport, dport, l4_ok, zero) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            if l4.len() < 8 {
                return None;
            }
            let zero =
                proto == IPPROTO_UDP && matches!(pseudo, Ips::V4(..)) && l4[6] == 0 && l4[7] == 0;
            let ok = zero || fold(sum16(l4, pseudo.pseudo_sum(proto, l4.len()))) == 0;
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
                ok,
                zero,
            )
        }
        IPPROTO_ICMP => (l4[0] as u16, l4[1] as u16, checksum(l4) == 0, false),
        IPPROTO_ICMPV6 => (
            l4[0] as u16,
            l4[1] as u16,
            fold(sum16(l4, pseudo.pseudo_sum(IPPROTO_ICMPV6, l4.len()))) == 0,
            false,
        ),
        _ => (0, 0, true, false),
    };
    Some(Decoded {
        dst_mac,
        src_mac,
        src,
        dst,
        proto,
        ttl,
        sport,
        dport,
        ip_csum_ok: ip_ok,
        l4_csum_ok: l4_ok,
        l4_csum_zero: zero,
    })
}
