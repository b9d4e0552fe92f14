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
}

/// Stateful firewall (`bpf/fw/fw.bpf.c`).
pub mod fw {
    pub const PROG_XDP: &str = "fw_xdp";
    pub const PROG_TC: &str = "fw_tc_egress";
    pub const MAP_ADDR4: &str = "fw_addr4";
    pub const MAP_ADDR6: &str = "fw_addr6";
    pub const MAP_VERDICT: &str = "fw_verdict";
    pub const MAP_HOST4: &str = "fw_host4";
    pub const MAP_HOST6: &str = "fw_host6";
    pub const MAP_PORTS: &str = "fw_ports";
    pub const MAP_CONFIG: &str = "fw_config";
    pub const MAP_CT: &str = "fw_ct";
    pub const MAP_FRAG: &str = "fw_frag";
    pub const MAP_RULE_STATS: &str = "fw_rule_stats";
    pub const MAP_STATS: &str = "fw_stats";
    pub const MAP_FLOWS: &str = "fw_flows";
    pub const MAP_EVENTS: &str = "fw_events";
    pub const MAP_EVSTATE: &str = "fw_evstate";
    pub const MAP_EVSTATS: &str = "fw_evstats";
    pub const MAP_IFSTATS: &str = "fw_ifstats";
    pub const MAP_CTSEEN: &str = "fw_ctseen";
    /// The last generation handed out (pinned; written by moat, not the programs).
    pub const MAP_GEN: &str = "fw_gen";
    pub const CTSEEN_SLOTS: u32 = 65536;
    /// Interface slots of `fw_ifstats` (index: see [`ifstat_idx`]).
    pub const IF_SLOTS: u32 = 256;

    /// `FW_IFSTAT_IDX`: the `fw_ifstats` entry of an interface, direction
    /// (`DIR_*`) and verdict.
    pub const fn ifstat_idx(ifindex: u32, dir: u8, dropped: bool) -> u32 {
        ((ifindex & (IF_SLOTS - 1)) << 2) | ((dir as u32) << 1) | dropped as u32
    }
    pub const PIN_DIR: &str = "/sys/fs/bpf/moat/fw";

    pub const STAT_PASS_ESTABLISHED: u32 = 0;
    pub const STAT_PASS_RULE: u32 = 1;
    pub const STAT_PASS_DEFAULT: u32 = 2;
    pub const STAT_PASS_RECHECKED: u32 = 3;
    pub const STAT_PASS_RELATED: u32 = 4;
    pub const STAT_PASS_FRAGMENT: u32 = 5;
    pub const STAT_PASS_NDP: u32 = 6;
    pub const STAT_PASS_NON_IP: u32 = 7;
    pub const STAT_DROP_RULE: u32 = 8;
    pub const STAT_DROP_DEFAULT: u32 = 9;
    pub const STAT_DROP_REVOKED: u32 = 10;
    pub const STAT_DROP_MALFORMED: u32 = 11;
    pub const STAT_DROP_FRAGMENT: u32 = 12;
    /// Not a verdict: a tracked connection was idle past its timeout.
    pub const STAT_CT_EXPIRED: u32 = 13;
    /// More VLAN tags than the parser follows: dropped (Linux would deliver it).
    pub const STAT_DROP_VLAN_DEPTH: u32 = 14;
    pub const STAT_MAX: u32 = 15;
    /// Names of the reasons, indexed by `STAT_*`.
    pub const STAT_NAMES: [&str; STAT_MAX as usize] = [
        "pass_established",
        "pass_rule",
        "pass_default",
        "pass_rechecked",
        "pass_related",
        "pass_fragment",
        "pass_ndp",
        "pass_non_ip",
        "drop_rule",
        "drop_default",
        "drop_revoked",
        "drop_malformed",
        "drop_fragment",
        "ct_expired",
        "drop_vlan_depth",
    ];

    /// Index into `fw_evstats`.
    pub const EV_SEEN: u32 = 0;
    pub const EV_EMITTED: u32 = 1;
    pub const EV_SAMPLED_OUT: u32 = 2;
    pub const EV_RATE_LIMITED: u32 = 3;
    pub const EV_LOST: u32 = 4;
    /// Not an event: new denied flows not recorded (flow bucket empty).
    pub const EV_FLOWS_SKIPPED: u32 = 5;
    pub const EV_MAX: u32 = 6;
    /// Names of `fw_evstats` entries, indexed by `EV_*`.
    pub const EV_NAMES: [&str; EV_MAX as usize] = [
        "seen",
        "emitted",
        "sampled_out",
        "rate_limited",
        "lost",
        "flows_skipped",
    ];
    pub const EVENT_DROP: u8 = 1;
    pub const EVENT_LOG: u8 = 2;
    pub const EVENT_CAP: usize = 128;
    pub const FLAG_LOG: u8 = 1;

    pub const DIR_INGRESS: u8 = 0;
    pub const DIR_EGRESS: u8 = 1;
    pub const ACTION_ALLOW: u8 = 1;
    pub const ACTION_DENY: u8 = 2;
    pub const PROTO_OTHER: u8 = 255;
    pub const RULE_DEFAULT: u32 = 0;

    pub const HAS_ADDR4: u8 = 1;
    pub const HAS_ADDR6: u8 = 2;
    pub const HAS_HOST4: u8 = 4;
    pub const HAS_HOST6: u8 = 8;
    pub const HAS_PORT_EXACT: u8 = 16;
    pub const HAS_PORT_ANY: u8 = 32;
    pub const HAS_VERDICT: u8 = 64;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FwAddr4Key {
        pub prefixlen: u32,
        pub addr: [u8; 4],
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FwAddr6Key {
        pub prefixlen: u32,
        pub addr: [u8; 16],
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct FwClass {
        pub class_id: u32,
    }

    /// `class_id` and `port` in network byte order.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FwVerdictKey {
        pub prefixlen: u32,
        pub class_id: u32,
        pub dir: u8,
        pub proto: u8,
        pub port: u16,
    }

    /// `class_id` and `port` in network byte order.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct FwPortKey {
        pub class_id: u32,
        pub dir: u8,
        pub proto: u8,
        pub plen: u8,
        pub pad: u8,
        pub port: u16,
        pub pad2: [u8; 2],
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FwVerdict {
        pub rule: u32,
        pub action: u8,
        /// `FLAG_*`
        pub flags: u8,
        pub pad: [u8; 2],
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FwConfig {
        pub generation: u32,
        pub default_ingress: u8,
        pub default_egress: u8,
        /// `HAS_*` bits: which policy maps hold entries.
        pub maps: u8,
        pub pad: u8,
        pub timeout_tcp: u32,
        pub timeout_udp: u32,
        pub timeout_other: u32,
        /// One event per `ev_sample` qualifying packets.
        pub ev_sample: u32,
        /// Per-CPU token buckets: ns of credit one event / new denied flow
        /// costs (0: none), and the credit cap (the burst).
        pub ev_cost_ns: u64,
        pub ev_cap_ns: u64,
        pub flow_cost_ns: u64,
        pub flow_cap_ns: u64,
        /// 1: every drop qualifies for an event.
        pub log_drops: u8,
        pub pad2: [u8; 7],
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct FwCtKey {
        pub local: [u8; 16],
        pub remote: [u8; 16],
        pub lport: u16,
        pub rport: u16,
        pub proto: u8,
        pub family: u8,
        pub pad: [u8; 2],
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FwCtVal {
        pub first_seen_ns: u64,
        pub last_seen_ns: u64,
        pub packets: u64,
        pub bytes: u64,
        pub generation: u32,
        pub rule: u32,
        pub port0: u16,
        pub dir0: u8,
        /// `FLAG_*` of the deciding rule.
        pub flags: u8,
        pub ifindex: u32,
    }

    /// A denied flow (key: `FwCtKey`).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FwFlowVal {
        pub first_seen_ns: u64,
        pub last_seen_ns: u64,
        pub packets: u64,
        pub bytes: u64,
        pub rule: u32,
        pub ifindex: u32,
        /// `STAT_*` of the last drop.
        pub reason: u8,
        pub dir: u8,
        pub pad: [u8; 6],
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FwBucket {
        pub last_ns: u64,
        pub credit_ns: u64,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FwEvstate {
        pub ev: FwBucket,
        pub flow: FwBucket,
        pub seq: u64,
    }

    /// One ring buffer record.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct FwEvent {
        pub ts_ns: u64,
        pub ifindex: u32,
        pub rule: u32,
        pub pkt_len: u32,
        pub cap_len: u16,
        pub kind: u8,
        pub reason: u8,
        pub dir: u8,
        pub pad: [u8; 7],
        pub data: [u8; EVENT_CAP],
    }

    impl FwEvent {
        /// Reads a record as the ring buffer hands it over (None if short).
        pub fn from_bytes(b: &[u8]) -> Option<FwEvent> {
            if b.len() < core::mem::size_of::<FwEvent>() {
                return None;
            }
            // SAFETY: length checked; every bit pattern is a valid FwEvent;
            // read_unaligned copes with any alignment.
            Some(unsafe { core::ptr::read_unaligned(b.as_ptr().cast::<FwEvent>()) })
        }
        /// The captured bytes of the frame.
        pub fn frame(&self) -> &[u8] {
            &self.data[..usize::from(self.cap_len).min(EVENT_CAP)]
        }
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FwFragKey {
        pub src: [u8; 16],
        pub dst: [u8; 16],
        pub id: u32,
        pub proto: u8,
        pub family: u8,
        pub pad: [u8; 2],
    }
}

/// Parser limits shared with `bpf/common/parse.h`.
pub mod parse {
    /// 802.1Q/802.1ad tags skipped before the ethertype is read.
    pub const MAX_VLAN_DEPTH: usize = 8;
    /// IPv6 extension headers walked before giving up.
    pub const MAX_IPV6_EXTHDRS: usize = 8;
}

/// Layout of one struct crossing the kernel/user boundary: its C name, size
/// and every field with its byte offset, in declaration order. Checked
/// against the BTF of the compiled objects (moat-ebpf's objects test), so a
/// reordered, resized or missing field fails without root.
pub struct StructLayout {
    pub c_name: &'static str,
    pub size: usize,
    pub fields: &'static [(&'static str, usize)],
}

macro_rules! layout {
    ($c:literal, $t:ty, [$($f:ident),* $(,)?]) => {
        StructLayout {
            c_name: $c,
            size: core::mem::size_of::<$t>(),
            fields: &[$((stringify!($f), core::mem::offset_of!($t, $f))),*],
        }
    };
}

pub const LAYOUTS: &[StructLayout] = &[
    layout!("count_value", count::CountValue, [packets, bytes]),
    layout!("fw_addr4_key", fw::FwAddr4Key, [prefixlen, addr]),
    layout!("fw_addr6_key", fw::FwAddr6Key, [prefixlen, addr]),
    layout!("fw_class", fw::FwClass, [class_id]),
    layout!(
        "fw_verdict_key",
        fw::FwVerdictKey,
        [prefixlen, class_id, dir, proto, port]
    ),
    layout!(
        "fw_port_key",
        fw::FwPortKey,
        [class_id, dir, proto, plen, pad, port, pad2]
    ),
    layout!("fw_verdict", fw::FwVerdict, [rule, action, flags, pad]),
    layout!(
        "fw_config",
        fw::FwConfig,
        [
            generation,
            default_ingress,
            default_egress,
            maps,
            pad,
            timeout_tcp,
            timeout_udp,
            timeout_other,
            ev_sample,
            ev_cost_ns,
            ev_cap_ns,
            flow_cost_ns,
            flow_cap_ns,
            log_drops,
            pad2
        ]
    ),
    layout!(
        "fw_ct_key",
        fw::FwCtKey,
        [local, remote, lport, rport, proto, family, pad]
    ),
    layout!(
        "fw_ct_val",
        fw::FwCtVal,
        [
            first_seen_ns,
            last_seen_ns,
            packets,
            bytes,
            generation,
            rule,
            port0,
            dir0,
            flags,
            ifindex
        ]
    ),
    layout!(
        "fw_flow_val",
        fw::FwFlowVal,
        [
            first_seen_ns,
            last_seen_ns,
            packets,
            bytes,
            rule,
            ifindex,
            reason,
            dir,
            pad
        ]
    ),
    layout!("fw_bucket", fw::FwBucket, [last_ns, credit_ns]),
    layout!("fw_evstate", fw::FwEvstate, [ev, flow, seq]),
    layout!(
        "fw_event",
        fw::FwEvent,
        [
            ts_ns, ifindex, rule, pkt_len, cap_len, kind, reason, dir, pad, data
        ]
    ),
    layout!(
        "fw_frag_key",
        fw::FwFragKey,
        [src, dst, id, proto, family, pad]
    ),
];

/// Every (kind, name, key size, value size) the objects must contain.
/// Programs have no sizes.
pub struct MapAbi {
    pub object: &'static str,
    pub name: &'static str,
    pub key_size: usize,
    pub value_size: usize,
}

/// Every map shared with userspace.
pub const MAPS: &[MapAbi] = &[
    map::<count::CountKey, count::CountValue>("count", count::MAP_STATS),
    map::<fw::FwAddr4Key, fw::FwClass>("fw", fw::MAP_ADDR4),
    map::<fw::FwAddr6Key, fw::FwClass>("fw", fw::MAP_ADDR6),
    map::<fw::FwVerdictKey, fw::FwVerdict>("fw", fw::MAP_VERDICT),
    map::<[u8; 4], fw::FwClass>("fw", fw::MAP_HOST4),
    map::<[u8; 16], fw::FwClass>("fw", fw::MAP_HOST6),
    map::<fw::FwPortKey, fw::FwVerdict>("fw", fw::MAP_PORTS),
    map::<u32, fw::FwConfig>("fw", fw::MAP_CONFIG),
    map::<fw::FwCtKey, fw::FwCtVal>("fw", fw::MAP_CT),
    map::<fw::FwFragKey, u32>("fw", fw::MAP_FRAG),
    map::<u32, count::CountValue>("fw", fw::MAP_RULE_STATS),
    map::<u32, count::CountValue>("fw", fw::MAP_STATS),
    map::<fw::FwCtKey, fw::FwFlowVal>("fw", fw::MAP_FLOWS),
    map::<(), ()>("fw", fw::MAP_EVENTS),
    map::<u32, fw::FwEvstate>("fw", fw::MAP_EVSTATE),
    map::<u32, u64>("fw", fw::MAP_EVSTATS),
    map::<u32, count::CountValue>("fw", fw::MAP_IFSTATS),
    map::<u32, u32>("fw", fw::MAP_CTSEEN),
    map::<u32, u64>("fw", fw::MAP_GEN),
];

const fn map<K, V>(object: &'static str, name: &'static str) -> MapAbi {
    MapAbi {
        object,
        name,
        key_size: core::mem::size_of::<K>(),
        value_size: core::mem::size_of::<V>(),
    }
}

/// Every program userspace loads: (object, program name).
pub const PROGRAMS: &[(&str, &str)] = &[
    ("count", count::PROG_XDP),
    ("fw", fw::PROG_XDP),
    ("fw", fw::PROG_TC),
];

#[cfg(feature = "aya")]
mod pod {
    use super::{count::CountValue, fw::*};
    // SAFETY (all below): #[repr(C)] structs of integer fields and byte
    // arrays with explicit padding fields, so no implicit padding; every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for CountValue {}
    unsafe impl aya::Pod for FwAddr4Key {}
    unsafe impl aya::Pod for FwAddr6Key {}
    unsafe impl aya::Pod for FwClass {}
    unsafe impl aya::Pod for FwVerdictKey {}
    unsafe impl aya::Pod for FwVerdict {}
    unsafe impl aya::Pod for FwPortKey {}
    unsafe impl aya::Pod for FwConfig {}
    unsafe impl aya::Pod for FwCtKey {}
    unsafe impl aya::Pod for FwCtVal {}
    unsafe impl aya::Pod for FwFragKey {}
    unsafe impl aya::Pod for FwFlowVal {}
    unsafe impl aya::Pod for FwEvstate {}
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
    fn fw_layouts_have_no_implicit_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<fw::FwAddr4Key>(), 8);
        assert_eq!(size_of::<fw::FwAddr6Key>(), 20);
        assert_eq!(size_of::<fw::FwVerdictKey>(), 12);
        assert_eq!(size_of::<fw::FwVerdict>(), 8);
        assert_eq!(size_of::<fw::FwPortKey>(), 12);
        assert_eq!(size_of::<fw::FwConfig>(), 64);
        assert_eq!(core::mem::offset_of!(fw::FwConfig, ev_cost_ns), 24);
        assert_eq!(size_of::<fw::FwFlowVal>(), 48);
        assert_eq!(size_of::<fw::FwEvstate>(), 40);
        assert_eq!(size_of::<fw::FwEvent>(), 32 + fw::EVENT_CAP);
        assert_eq!(core::mem::offset_of!(fw::FwEvent, data), 32);
        assert_eq!(core::mem::offset_of!(fw::FwCtVal, ifindex), 44);
        assert_eq!(fw::EV_NAMES.len(), fw::EV_MAX as usize);
        assert_eq!(size_of::<fw::FwCtKey>(), 40);
        assert_eq!(size_of::<fw::FwCtVal>(), 48);
        assert_eq!(size_of::<fw::FwFragKey>(), 40);
        assert_eq!(core::mem::offset_of!(fw::FwCtVal, port0), 40);
        assert_eq!(fw::STAT_NAMES.len(), fw::STAT_MAX as usize);
    }

    #[test]
    fn count_value_layout() {
        assert_eq!(core::mem::size_of::<count::CountValue>(), 16);
        assert_eq!(core::mem::offset_of!(count::CountValue, packets), 0);
        assert_eq!(core::mem::offset_of!(count::CountValue, bytes), 8);
        assert_eq!(count::CLASS_NAMES.len(), count::CLASS_MAX as usize);
    }
}
