//! The flow hash that picks a new connection's Maglev slot: the same
//! function as `lb_flow_hash` in bpf/lb/lb.bpf.c (the differential test
//! compares them through BPF_PROG_TEST_RUN).

use std::net::IpAddr;

use moat_abi::lb as abi;

/// A connection as the balancer sees it: client side, VIP side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

pub fn addr_bytes(a: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v) => out[..4].copy_from_slice(&v.octets()),
        IpAddr::V6(v) => out = v.octets(),
    }
    out
}

/// The hash of the fields `fields` (`abi::HASH_*` bits) selects.
pub fn flow_hash(f: &Flow, fields: u8) -> u32 {
    // struct lb_hash_in: src[16], dst[16], sport, dport (network order), proto, pad[3]
    let mut b = [0u8; 40];
    if fields & abi::HASH_SRC != 0 {
        b[..16].copy_from_slice(&addr_bytes(f.src));
    }
    if fields & abi::HASH_DST != 0 {
        b[16..32].copy_from_slice(&addr_bytes(f.dst));
    }
    if fields & abi::HASH_SPORT != 0 {
        b[32..34].copy_from_slice(&f.sport.to_be_bytes());
    }
    if fields & abi::HASH_DPORT != 0 {
        b[34..36].copy_from_slice(&f.dport.to_be_bytes());
    }
    if fields & abi::HASH_PROTO != 0 {
        b[36] = f.proto;
    }
    let mut h: u32 = 0x9e37_79b9;
    for w in b.chunks_exact(4) {
        // The kernel reads the words in the machine's byte order.
        h ^= u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
    }
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_not_selected_do_not_count() {
        let a = Flow {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.200.0.10".parse().unwrap(),
            sport: 40000,
            dport: 80,
            proto: 6,
        };
        let mut b = a;
        b.sport = 40001;
        assert_ne!(flow_hash(&a, 0x1f), flow_hash(&b, 0x1f));
        assert_eq!(flow_hash(&a, abi::HASH_SRC), flow_hash(&b, abi::HASH_SRC));
    }
}
