//! Packet counter (`bpf/count/count.bpf.c`).

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
/// More VLAN tags than the parser follows (`MAX_VLAN_DEPTH`): contents unknown.
pub const CLASS_VLAN_TOO_DEEP: u32 = 10;
/// Number of classes (`max_entries` of `count_stats`).
pub const CLASS_MAX: u32 = 11;

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
    "vlan_too_deep",
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
