//! Runtime security (`bpf/sec/sec.bpf.c`); see `bpf/common/abi/sec.h`.

pub const PROG_EXEC: &str = "sec_exec";
pub const PROG_FORK: &str = "sec_fork";
pub const PROG_EXIT: &str = "sec_exit";
pub const PROG_CONNECT4: &str = "sec_connect4";
pub const PROG_CONNECT6: &str = "sec_connect6";
pub const PROG_CONNECT_TP: &str = "sec_connect_tp";
pub const PROG_SETID: &str = "sec_setid";
pub const PROG_PTRACE: &str = "sec_ptrace";
pub const PROG_OPEN: &str = "sec_open";
pub const PROG_BIND4: &str = "sec_bind4";
pub const PROG_BIND6: &str = "sec_bind6";
pub const PROG_BIND_TP: &str = "sec_bind_tp";
pub const MAP_PROCS: &str = "sec_procs";
pub const MAP_EVENTS: &str = "sec_events";
pub const MAP_STATS: &str = "sec_stats";
pub const MAP_CONFIG: &str = "sec_config";
pub const MAP_BINS: &str = "sec_bins";
pub const MAP_CGROUPS: &str = "sec_cgroups";
pub const MAP_SCRATCH: &str = "sec_scratch";
pub const MAP_GUARD: &str = "sec_gconf";
pub const MAP_FILES: &str = "sec_gfiles";
pub const MAP_NET4: &str = "sec_gnet4";
pub const MAP_NET6: &str = "sec_gnet6";
pub const MAP_COUNTS: &str = "sec_gcounts";
pub const MAP_PATHS: &str = "sec_paths";
pub const MAP_PORTS: &str = "sec_gports";
pub const MAP_EXITED: &str = "sec_exited";
pub const EXITED_MAX: u32 = 16384;
pub const PORTS_MAX: u32 = 1024;
pub const MAP_PKEY: &str = "sec_pkey";
pub const PATHS_MAX: u32 = 1024;

pub const RULES_MAX: usize = 64;
pub const FILES_MAX: u32 = 4096;
pub const NETS_MAX: u32 = 4096;
pub const DIR_DEPTH: u32 = 24;

pub const PROCS_MAX: u32 = 65536;
pub const PATH_MAX: usize = 256;
pub const ARGS_MAX: usize = 512;
/// /proc starttime's unit (USER_HZ 100) in ns: exec ids of processes known
/// only from their task are rounded down to it.
pub const XID_TICK_NS: u64 = 10_000_000;

pub const HOOK_EXEC: u32 = 0;
pub const HOOK_EXIT: u32 = 1;
pub const HOOK_FORK: u32 = 2;
pub const HOOK_CONNECT: u32 = 3;
pub const HOOK_SETID: u32 = 4;
pub const HOOK_PTRACE: u32 = 5;
pub const HOOK_OPEN: u32 = 6;
pub const HOOK_LISTEN: u32 = 7;
pub const HOOK_MAX: u32 = 8;
/// Hook names in slot order.
pub const HOOK_NAMES: [&str; 8] = [
    "exec", "exit", "fork", "connect", "setid", "ptrace", "open", "listen",
];

pub const EV_EXEC: u32 = 1;
pub const EV_EXIT: u32 = 2;
pub const EV_CONNECT: u32 = 3;
pub const EV_SETID: u32 = 4;
pub const EV_PTRACE: u32 = 5;
pub const EV_OPEN: u32 = 6;
pub const EV_LISTEN: u32 = 7;

pub const OP_EXEC: usize = 0;
pub const OP_CONNECT: usize = 1;
pub const OP_CONNECT_TP: usize = 2;
pub const OP_SETID: usize = 3;
pub const OP_PTRACE: usize = 4;
pub const OP_LISTEN: usize = 5;
pub const OP_LISTEN_TP: usize = 6;
pub const OP_MAX: usize = 7;

pub const ACT_LOG: u32 = 1;
pub const ACT_DENY: u32 = 2;
pub const ACT_KILL: u32 = 3;

pub const CF_EXEC: u32 = 1;
pub const CF_EXIT: u32 = 2;
pub const CF_BINARY: u32 = 4;
pub const CF_CGROUP: u32 = 8;
pub const CF_GUARD: u32 = 16;
pub const CF_OPEN: u32 = 32;
pub const CF_CONNECT: u32 = 64;

pub const EF_ARGS_TRUNC: u32 = 1;
pub const EF_NO_PARENT: u32 = 2;
pub const EF_MEMFD: u32 = 4;
pub const EF_TTY: u32 = 8;

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
    pub bin: u64,
    pub notbin: u64,
    pub anc: u64,
    pub selfanc: u64,
    pub comm: [u8; 16],
    pub binary: [u8; PATH_MAX],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SecPathKey {
    pub prefixlen: u32,
    pub path: [u8; PATH_MAX],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SecInode {
    pub ino: u64,
    /// The kernel's dev_t (major << 20 | minor).
    pub dev: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecMasks {
    pub bin: u64,
    pub notbin: u64,
    pub anc: u64,
    pub pad: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecNet4Key {
    pub prefixlen: u32,
    pub addr: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecNet6Key {
    pub prefixlen: u32,
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecNet {
    pub remote: u64,
    pub remote_not: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecGuard {
    pub op: [u64; OP_MAX],
    pub need_bin: u64,
    pub need_anc: u64,
    pub need_cg: u64,
    pub need_memfd: u64,
    pub need_tty: u64,
    pub need_remote: u64,
    pub need_port: u64,
    pub deny: u64,
    pub kill: u64,
    pub cg_id: [u64; RULES_MAX],
    pub cg_level: [u32; RULES_MAX],
}

impl Default for SecGuard {
    fn default() -> Self {
        SecGuard {
            op: [0; OP_MAX],
            need_bin: 0,
            need_anc: 0,
            need_cg: 0,
            need_memfd: 0,
            need_tty: 0,
            need_remote: 0,
            need_port: 0,
            deny: 0,
            kill: 0,
            cg_id: [0; RULES_MAX],
            cg_level: [0; RULES_MAX],
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecRuleStat {
    pub matched: u64,
    pub acted: u64,
    pub events: u64,
    pub lost: u64,
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
            bin: 0,
            notbin: 0,
            anc: 0,
            selfanc: 0,
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
    pub rule: u32,
    pub action: u32,
    pub family: u32,
    pub port: u32,
    pub addr: [u8; 16],
    pub arg0: u64,
    pub arg1: u64,
}
