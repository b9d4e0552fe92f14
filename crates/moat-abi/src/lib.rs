//! Rust mirror of `bpf/common/abi.h`.
//!
//! Every struct that crosses the kernel/user boundary is declared here with the
//! same field names, `#[repr(C)]` and explicit padding. Every program and map
//! name exists once here and once in C. The test `abi_matches_objects` in
//! `moat-ebpf` checks this file against the compiled objects.

/// Longest name the kernel keeps for a program or a map (it cuts the rest).
pub const BPF_OBJ_NAME_MAX: usize = 15;

/// Packet counter (`bpf/count/count.bpf.c`).
pub mod count {
    /// XDP program: classifies, counts, passes.
    pub const PROG_XDP: &str = "count_xdp";
    /// Per-CPU array, key `u32` class index, value [`CountValue`].
    pub const MAP_STATS: &str = "count_stats";

    pub const CLASS_IPV4_TCP: u32 = 0;
    pub const CLASS_IPV4_UDP: u32 = 1;
    pub const CLASS_IPV4_ICMP: u32 = 2;
    pub const CLASS_IPV4_OTHER: u32 = 3;
    pub const CLASS_IPV6_TCP: u32 = 4;
    pub const CLASS_IPV6_UDP: u32 = 5;
    pub const CLASS_IPV6_ICMP: u32 = 6;
    pub const CLASS_IPV6_OTHER: u32 = 7;
    pub const CLASS_ARP: u32 = 8;
    pub const CLASS_OTHER: u32 = 9;
    /// Number of classes (`max_entries` of `count_stats`).
    pub const CLASS_MAX: u32 = 10;

    /// Class names, indexed by class.
    pub const CLASS_NAMES: [&str; CLASS_MAX as usize] = [
        "ipv4_tcp",
        "ipv4_udp",
        "ipv4_icmp",
        "ipv4_other",
        "ipv6_tcp",
        "ipv6_udp",
        "ipv6_icmp",
        "ipv6_other",
        "arp",
        "other",
    ];

    /// `struct count_value`: frames and bytes (whole frame from Ethernet on).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct CountValue {
        pub packets: u64,
        pub bytes: u64,
    }

    /// Key type of `count_stats`.
    pub type CountKey = u32;
}

/// Parser limits shared with `bpf/common/parse.h`.
pub mod parse {
    /// 802.1Q/802.1ad tags skipped before the ethertype is read.
    pub const MAX_VLAN_DEPTH: usize = 2;
    /// IPv6 extension headers walked before giving up.
    pub const MAX_IPV6_EXTHDRS: usize = 8;
}

/// Every (kind, name, key size, value size) the objects must contain.
/// Programs have no sizes.
pub struct MapAbi {
    pub object: &'static str,
    pub name: &'static str,
    pub key_size: usize,
    pub value_size: usize,
}

/// Every map shared with userspace.
pub const MAPS: &[MapAbi] = &[MapAbi {
    object: "count",
    name: count::MAP_STATS,
    key_size: core::mem::size_of::<count::CountKey>(),
    value_size: core::mem::size_of::<count::CountValue>(),
}];

/// Every program userspace loads: (object, program name).
pub const PROGRAMS: &[(&str, &str)] = &[("count", count::PROG_XDP)];

#[cfg(feature = "aya")]
mod pod {
    // SAFETY: CountValue is #[repr(C)], made only of u64 fields, has no padding
    // and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::count::CountValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_kernel_limit() {
        for m in MAPS {
            assert!(m.name.len() <= BPF_OBJ_NAME_MAX, "{}", m.name);
        }
        for (_, p) in PROGRAMS {
            assert!(p.len() <= BPF_OBJ_NAME_MAX, "{p}");
        }
    }

    #[test]
    fn count_value_layout() {
        assert_eq!(core::mem::size_of::<count::CountValue>(), 16);
        assert_eq!(core::mem::offset_of!(count::CountValue, packets), 0);
        assert_eq!(core::mem::offset_of!(count::CountValue, bytes), 8);
        assert_eq!(count::CLASS_NAMES.len(), count::CLASS_MAX as usize);
    }
}
