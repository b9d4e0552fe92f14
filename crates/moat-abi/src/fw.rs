//! Stateful firewall (`bpf/fw/fw.bpf.c`).

pub const PROG_XDP: &str = "fw_xdp";
pub const PROG_TC: &str = "fw_tc_egress";
pub const MAP_ADDR4: &str = "fw_addr4";
pub const MAP_ADDR6: &str = "fw_addr6";
pub const MAP_VERDICT: &str = "fw_verdict";
pub const MAP_HOST4: &str = "fw_host4";
pub const MAP_HOST6: &str = "fw_host6";
pub const MAP_PORTS: &str = "fw_ports";
pub const MAP_CONFIG: &str = "fw_config";
/// Every verdict of the dense class (see bpf/common/abi/fw.h).
pub const MAP_DENSE: &str = "fw_dense";
/// Bit filter in front of the host hashes.
pub const MAP_HOSTBITS: &str = "fw_hostbits";
pub const DENSE_PROTOS: u32 = 5;
pub const DENSE_SLOTS: u32 = 2 * DENSE_PROTOS * 65536;
/// `FW_DENSE_IDX`: dir (`DIR_*`), row (0 tcp, 1 udp, 2 icmp, 3 icmpv6, 4 other), port.
pub const fn dense_idx(dir: u8, proto_idx: u32, port: u16) -> u32 {
    ((dir as u32 * DENSE_PROTOS + proto_idx) << 16) | port as u32
}
/// `fw_config.maps2` bits.
pub const HAS2_DENSE: u8 = 1;
pub const HAS2_HOSTBITS: u8 = 2;
pub const MAP_CT: &str = "fw_ct";
/// Connections that saw traffic both ways (see bpf/common/abi/fw.h).
pub const MAP_CT_ASSURED: &str = "fw_ct_assured";
pub const MAP_FRAG: &str = "fw_frag";
pub const MAP_RULE_STATS: &str = "fw_rule_stats";
pub const MAP_STATS: &str = "fw_stats";
pub const MAP_FLOWS: &str = "fw_flows";
pub const MAP_FLOWTAGS: &str = "fw_flowtags";
pub const MAP_EVENTS: &str = "fw_events";
pub const MAP_EVSTATE: &str = "fw_evstate";
pub const MAP_EVSTATS: &str = "fw_evstats";
pub const MAP_IFSTATS: &str = "fw_ifstats";
pub const MAP_CTSEEN: &str = "fw_ctseen";
/// The last generation handed out (pinned; written by moat, not the programs).
pub const MAP_GEN: &str = "fw_gen";
/// The program a passed packet runs next (see bpf/common/abi/fw.h).
pub const MAP_NEXT: &str = "fw_next";
pub const CTSEEN_SLOTS: u32 = 16384;
/// u32 slots per entry of `fw_ctseen` and `fw_flowtags` (one cache line: an
/// array map rounds each value up to 8 bytes, so one u32 per entry would
/// take twice the cache).
pub const LINE_SLOTS: u32 = 16;

/// An entry of `fw_ctseen` or `fw_flowtags`: slot s lives in entry
/// s / LINE_SLOTS, word s % LINE_SLOTS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwLine {
    pub slot: [u32; LINE_SLOTS as usize],
}
/// Slots of the direct-mapped `fw_flows` array.
pub const FLOW_SLOTS: u32 = 8192;
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
/// Not verdicts: conntrack bookkeeping (`packets` counts; bytes unused).
pub const STAT_CT_NEW: u32 = 15;
pub const STAT_CT_ASSURED: u32 = 16;
pub const STAT_CT_MOVED: u32 = 17;
pub const STAT_CT_FORGOT_NEW: u32 = 18;
pub const STAT_CT_FORGOT_ASSURED: u32 = 19;
pub const STAT_MAX: u32 = 20;
/// Whether reason `i` is a verdict (a packet), not bookkeeping.
pub const fn stat_is_verdict(i: u32) -> bool {
    i < STAT_MAX && i != STAT_CT_EXPIRED && i < STAT_CT_NEW
}
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
    "ct_new",
    "ct_assured",
    "ct_moved",
    "ct_forgot_new",
    "ct_forgot_assured",
];

/// Index into `fw_evstats`.
pub const EV_SEEN: u32 = 0;
pub const EV_EMITTED: u32 = 1;
pub const EV_SAMPLED_OUT: u32 = 2;
pub const EV_RATE_LIMITED: u32 = 3;
pub const EV_LOST: u32 = 4;
/// Not an event: new denied flows not recorded (flow bucket empty).
pub const EV_FLOWS_SKIPPED: u32 = 5;
/// Not an event: a denied-flow record pushed out of its slot by another flow.
pub const EV_FLOWS_REPLACED: u32 = 6;
pub const EV_MAX: u32 = 7;
/// Names of `fw_evstats` entries, indexed by `EV_*`.
pub const EV_NAMES: [&str; EV_MAX as usize] = [
    "seen",
    "emitted",
    "sampled_out",
    "rate_limited",
    "lost",
    "flows_skipped",
    "flows_replaced",
];
pub const EVENT_DROP: u8 = 1;
pub const EVENT_LOG: u8 = 2;
pub const EVENT_CAP: usize = 128;
pub const FLAG_LOG: u8 = 1;

/// TCP connection states (`FwCtVal::tcp_state`); see bpf/common/abi/fw.h.
pub const TCP_NONE: u8 = 0;
pub const TCP_SYN_SENT: u8 = 1;
pub const TCP_SYN_RECV: u8 = 2;
pub const TCP_ESTABLISHED: u8 = 3;
pub const TCP_FIN_WAIT: u8 = 4;
pub const TCP_CLOSE_WAIT: u8 = 5;
pub const TCP_LAST_ACK: u8 = 6;
pub const TCP_TIME_WAIT: u8 = 7;
pub const TCP_CLOSE: u8 = 8;
pub const TCP_STATES: u8 = 9;
/// Slots of `FwConfig::tcp_timeouts` (a power of two: the kernel masks the index).
pub const TCP_TIMEOUT_SLOTS: u8 = 16;
/// Names of the TCP states, indexed by `TCP_*`.
pub const TCP_STATE_NAMES: [&str; TCP_STATES as usize] = [
    "none",
    "syn_sent",
    "syn_recv",
    "established",
    "fin_wait",
    "close_wait",
    "last_ack",
    "time_wait",
    "close",
];

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
/// Some class is a blocklist (`FwClass::block_rule`): looked up before conntrack.
pub const HAS_BLOCK: u8 = 128;

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
    /// Not 0 (indexed by `DIR_*`): every packet to and from these addresses
    /// is denied, whatever protocol and port, by this rule id in each
    /// direction (a blocklist).
    pub block_rule: [u32; 2],
    /// `FLAG_*` of those rules.
    pub block_flags: [u8; 2],
    pub pad: [u8; 2],
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
    /// Idle seconds per TCP state (`TCP_*`; `[TCP_NONE]` and the slots past
    /// `TCP_STATES` = `timeout_tcp`).
    pub tcp_timeouts: [u32; TCP_TIMEOUT_SLOTS as usize],
    /// The class of addresses only a /0 covers (kept out of the tries).
    pub any4: FwClass,
    pub any6: FwClass,
    /// Class whose verdicts `fw_dense` holds (`HAS2_DENSE`).
    pub dense_class: u32,
    /// Bits of `fw_hostbits` - 1 (`HAS2_HOSTBITS`).
    pub hostbits_mask: u32,
    /// `HAS2_*` bits.
    pub maps2: u8,
    pub pad3: [u8; 7],
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
    /// `TCP_*` (`TCP_NONE` for other protocols).
    pub tcp_state: u8,
    /// 1 once a packet went the other way (not `dir0`).
    pub replied: u8,
    pub pad: [u8; 6],
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

/// One slot of the direct-mapped `fw_flows` array (empty: `first_seen_ns` 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwFlowSlot {
    pub key: FwCtKey,
    pub val: FwFlowVal,
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
    pub clock_jiffies: u64,
    pub clock_ns: u64,
    /// The packet's parse results, handed from the entry to the core through
    /// memory (kernel-only scratch).
    pub handoff: [u32; 4],
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
