//! Runtime security (`bpf/sec/sec.bpf.c`); see `bpf/common/abi/sec.h`.

pub const PROG_EXEC: &str = "sec_exec";
pub const PROG_FORK: &str = "sec_fork";
pub const PROG_EXIT: &str = "sec_exit";
pub const MAP_PROCS: &str = "sec_procs";
pub const MAP_EVENTS: &str = "sec_events";
pub const MAP_STATS: &str = "sec_stats";
pub const MAP_CONFIG: &str = "sec_config";
pub const MAP_BINS: &str = "sec_bins";
pub const MAP_CGROUPS: &str = "sec_cgroups";
pub const MAP_SCRATCH: &str = "sec_scratch";

pub const PROCS_MAX: u32 = 65536;
pub const PATH_MAX: usize = 256;
pub const ARGS_MAX: usize = 512;
/// /proc starttime's unit (USER_HZ 100) in ns: exec ids of processes known
/// only from their task are rounded down to it.
pub const XID_TICK_NS: u64 = 10_000_000;

pub const HOOK_EXEC: u32 = 0;
pub const HOOK_EXIT: u32 = 1;
pub const HOOK_FORK: u32 = 2;
pub const HOOK_MAX: u32 = 3;
/// Hook names in slot order.
pub const HOOK_NAMES: [&str; 3] = ["exec", "exit", "fork"];

pub const EV_EXEC: u32 = 1;
pub const EV_EXIT: u32 = 2;

pub const CF_EXEC: u32 = 1;
pub const CF_EXIT: u32 = 2;
pub const CF_BINARY: u32 = 4;
pub const CF_CGROUP: u32 = 8;

pub const EF_ARGS_TRUNC: u32 = 1;
pub const EF_NO_PARENT: u32 = 2;
pub const EF_MEMFD: u32 = 4;

/// An exec id: one process image.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecXid {
    pub ns: u64,
    pub pid: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SecProc {
    pub xid: SecXid,
    pub parent: SecXid,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub flags: u32,
    pub cgroup: u64,
    pub comm: [u8; 16],
    pub binary: [u8; PATH_MAX],
}

impl Default for SecProc {
    fn default() -> Self {
        SecProc {
            xid: SecXid::default(),
            parent: SecXid::default(),
            ppid: 0,
            uid: 0,
            gid: 0,
            flags: 0,
            cgroup: 0,
            comm: [0; 16],
            binary: [0; PATH_MAX],
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecStat {
    pub seen: u64,
    pub matched: u64,
    pub lost: u64,
    pub pad: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecConfig {
    pub flags: u32,
    pub pad: u32,
}

/// A ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SecEvent {
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub xid: SecXid,
    pub parent: SecXid,
    pub ktime: u64,
    pub cgroup: u64,
    pub uid: u32,
    pub gid: u32,
    pub exit_code: u32,
    pub signal: u32,
    pub args_len: u32,
    pub flags: u32,
    pub comm: [u8; 16],
    pub binary: [u8; PATH_MAX],
    pub args: [u8; ARGS_MAX],
}
