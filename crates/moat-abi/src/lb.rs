//! L4 load balancer (`bpf/lb/lb.bpf.c`); see `bpf/common/abi/lb.h`.

pub const PROG_XDP: &str = "lb_xdp";
pub const PIN_DIR: &str = "lb";
pub const MAP_VIPS: &str = "lb_vips";
pub const MAP_MAGLEV: &str = "lb_maglev";
pub const MAP_BACKENDS: &str = "lb_backends";
pub const MAP_SVCS: &str = "lb_svcs";
pub const MAP_CT: &str = "lb_ct";
pub const MAP_REV: &str = "lb_rev";
pub const MAP_STATS: &str = "lb_stats";
pub const MAP_BSTATS: &str = "lb_bstats";
pub const MAP_SSTATS: &str = "lb_sstats";
pub const MAP_CONFIG: &str = "lb_config";
pub const MAP_BACK: &str = "lb_back";
pub const MAP_IFACES: &str = "lb_ifaces";
pub const IF_SLOTS: u32 = 1024;
pub const BACK_AMBIG: u8 = 1;
pub const BF_REV: u32 = 1;
pub const BF_RESET_DOWN: u32 = 2;
pub const MAX_BACKENDS: u32 = 16384;
pub const MAX_SERVICES: u32 = 1024;
pub const NONE: u32 = 0xFFFF_FFFF;
pub const CLOSING_SECS: u64 = 10;

pub const MODE_NAT: u8 = 0;
pub const MODE_DSR: u8 = 1;
pub const VIP_ECHO: u8 = 1;
pub const HASH_SRC: u8 = 1;
pub const HASH_SPORT: u8 = 2;
pub const HASH_DST: u8 = 4;
pub const HASH_DPORT: u8 = 8;
pub const HASH_PROTO: u8 = 16;

pub const B_EMPTY: u8 = 0;
pub const B_UP: u8 = 1;
pub const B_DOWN: u8 = 2;
pub const B_DRAIN: u8 = 3;

/// `LB_STAT_*` in slot order (`LB_STAT_<NAME uppercased>`).
pub const STAT_NAMES: &[&str] = &[
    "pass",
    "new",
    "tracked",
    "reply",
    "echo",
    "drop_no_backend",
    "drop_malformed",
    "drop_fragment",
    "drop_proto",
    "drop_no_route",
    "out_tx",
    "out_redirect",
    "out_kernel",
    "reselect",
    "icmp_error",
];
pub const STAT_MAX: u32 = 15;
pub const STAT_PASS: u32 = 0;
pub const STAT_NEW: u32 = 1;
pub const STAT_TRACKED: u32 = 2;
pub const STAT_REPLY: u32 = 3;
pub const STAT_ECHO: u32 = 4;
pub const STAT_DROP_NO_BACKEND: u32 = 5;
pub const STAT_DROP_MALFORMED: u32 = 6;
pub const STAT_DROP_FRAGMENT: u32 = 7;
pub const STAT_DROP_PROTO: u32 = 8;
pub const STAT_DROP_NO_ROUTE: u32 = 9;
pub const STAT_OUT_TX: u32 = 10;
pub const STAT_OUT_REDIRECT: u32 = 11;
pub const STAT_OUT_KERNEL: u32 = 12;
pub const STAT_RESELECT: u32 = 13;
pub const STAT_ICMP_ERROR: u32 = 14;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbVipKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbVip {
    pub svc: u32,
    pub table_off: u32,
    pub mode: u8,
    pub hash: u8,
    pub flags: u8,
    pub pad: [u8; 5],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbBackend {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub state: u8,
    pub svc: u32,
    pub weight: u32,
    pub flags: u32,
}

/// Where a NAT backend's replies come from (key: `LbVipKey` of the backend).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbBack {
    pub vip: [u8; 16],
    pub vport: u16,
    pub flags: u8,
    pub pad: u8,
    pub svc: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbSvc {
    pub name: [u8; 32],
    pub vip: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    pub mode: u8,
    pub hash: u8,
    pub used: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbCtKey {
    pub client: [u8; 16],
    pub vip: [u8; 16],
    pub cport: u16,
    pub vport: u16,
    pub proto: u8,
    pub family: u8,
    pub pad: [u8; 2],
}

/// lb_bstats value: what one backend slot forwarded (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbBcount {
    pub packets: u64,
    pub bytes: u64,
    /// New connections given to it.
    pub conns: u64,
    pub pad: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbCtVal {
    pub last_ns: u64,
    pub slot: u32,
    pub svc: u32,
    pub backend: [u8; 16],
    pub bport: u16,
    pub closing: u8,
    pub pad: [u8; 5],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbRevKey {
    pub backend: [u8; 16],
    pub client: [u8; 16],
    pub bport: u16,
    pub cport: u16,
    pub proto: u8,
    pub family: u8,
    pub pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbRevVal {
    pub vip: [u8; 16],
    pub vport: u16,
    pub pad: [u8; 6],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbConfig {
    pub table_size: u32,
    pub generation: u32,
    pub udp_idle_ns: u64,
    pub tcp_idle_ns: u64,
}
