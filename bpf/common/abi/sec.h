/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * abi/sec.h — runtime security: the process table kept by the kernel side
 * and the events of bpf/sec/sec.bpf.c (exec, exit; fork keeps the table).
 *
 * Exec ids: every process image has one, struct sec_xid {ns, pid}. An exec
 * seen live gets {boot-clock ns of the exec, pid}; a process known only from
 * its task (started before moat, or whose entry was lost) gets
 * {start_boottime rounded down to 10 ms, pid}: the same value userspace
 * derives from /proc/PID/stat's starttime (USER_HZ 100), so both sides name
 * it alike. A fork child runs its parent's image: it carries the parent's
 * exec id until it execs; an exec's parent is the image it replaced, with
 * or without a fork (`sh -c 'exec prog'`: prog's parent is sh).
 */
#ifndef MOAT_ABI_SEC_H
#define MOAT_ABI_SEC_H

#include <linux/types.h>

#define SEC_PROG_EXEC "sec_exec"   /* tp_btf/sched_process_exec */
#define SEC_PROG_FORK "sec_fork"   /* tp_btf/sched_process_fork */
#define SEC_PROG_EXIT "sec_exit"   /* tp_btf/sched_process_exit */
/* moat guard (rules compiled to the guard_* maps; none loaded by watch): */
#define SEC_PROG_CONNECT4 "sec_connect4" /* cgroup/connect4: log, deny */
#define SEC_PROG_CONNECT6 "sec_connect6" /* cgroup/connect6: log, deny */
#define SEC_PROG_CONNECT_TP "sec_connect_tp" /* tracepoint sys_enter_connect: kill */
#define SEC_PROG_SETID "sec_setid"   /* tracepoint sys_enter_set*id, capset */
#define SEC_PROG_PTRACE "sec_ptrace" /* tracepoint sys_enter_ptrace */
#define SEC_PROG_BIND4 "sec_bind4"   /* cgroup/post_bind4: listen log, deny */
#define SEC_PROG_BIND6 "sec_bind6"   /* cgroup/post_bind6: listen log, deny */
#define SEC_PROG_BIND_TP "sec_bind_tp" /* tracepoint sys_enter_bind: listen kill */
/* moat watch --file (open, openat, openat2, creat): */
#define SEC_PROG_OPEN "sec_open"     /* tp_btf/sys_enter (open, openat, openat2, creat) */

/*
 * sec_procs: BPF_MAP_TYPE_HASH, SEC_PROCS_MAX; key __u32 tgid, value struct
 *   sec_proc. writer: the three programs (fork adds, exec replaces, exit
 *   removes) and userspace (seeds what /proc shows at start, BPF_NOEXIST);
 *   reader: userspace (moat ps).
 * sec_events: BPF_MAP_TYPE_RINGBUF of struct sec_event (size set at load).
 * sec_stats: BPF_MAP_TYPE_PERCPU_ARRAY, SEC_HOOK_MAX; struct sec_stat per hook:
 *   seen (every call), matched (passed the filters), lost (matched, ring full).
 *   matched = events written + lost, exactly.
 * sec_config: BPF_MAP_TYPE_ARRAY of 1 struct sec_config.
 * sec_bins: BPF_MAP_TYPE_HASH; key char[SEC_PATH_MAX] (NUL padded), value __u8:
 *   the binaries an exec must name when SEC_CF_BINARY is set.
 * sec_cgroups: BPF_MAP_TYPE_CGROUP_ARRAY of 1: the cgroup (v2 directory fd)
 *   events must come from, descendants included, when SEC_CF_CGROUP is set.
 * sec_scratch: BPF_MAP_TYPE_PERCPU_ARRAY of 1 struct sec_proc (working space).
 *
 * Guard (moat guard): rule i of a policy is bit i of every mask (at most
 * SEC_RULES_MAX rules). Userspace compiles the policy; the kernel only looks up.
 * sec_gconf: BPF_MAP_TYPE_ARRAY of 1 struct sec_guard: per operation, the
 *   rules the kernel enforces there, and which rules carry which conditions.
 * sec_gfiles: BPF_MAP_TYPE_HASH; key struct sec_inode (a binary, or a
 *   directory a `binary:` prefix names), value struct sec_masks. An exec
 *   looks up its file and up to SEC_DIR_DEPTH parent directories on the
 *   file's own filesystem and ORs their masks into the new image's entry.
 * sec_gnet4 / sec_gnet6: BPF_MAP_TYPE_LPM_TRIE; key struct sec_net4_key /
 *   sec_net6_key, value struct sec_net: the rules whose remote (remote_not)
 *   lists cover the longest stored prefix (userspace folds shorter ones in).
 * sec_paths: BPF_MAP_TYPE_LPM_TRIE; key struct sec_path_key, value __u8:
 *   the path prefixes of moat watch --file (a prefix ending in '/' covers
 *   what is below it; an exact path is stored with its NUL). sec_pkey:
 *   PERCPU_ARRAY of 1 struct sec_path_key (the lookup key, too big for the stack).
 * sec_exited: BPF_MAP_TYPE_LRU_HASH, SEC_EXITED_MAX; key struct sec_xid,
 *   value struct sec_proc: images that ended (exit) or were replaced (exec),
 *   kept so a reader can still name them as ancestors; the oldest go first.
 * sec_gports: BPF_MAP_TYPE_HASH; key __u32 local port, value __u64: the
 *   listen rules whose port: names it.
 * sec_gcounts: BPF_MAP_TYPE_ARRAY, SEC_RULES_MAX struct sec_rule_stat:
 *   per rule, exact even when events are lost (atomic adds; rules enforced
 *   in userspace are counted there, in the same slots).
 */
#define SEC_MAP_PROCS   "sec_procs"
#define SEC_MAP_EVENTS  "sec_events"
#define SEC_MAP_STATS   "sec_stats"
#define SEC_MAP_CONFIG  "sec_config"
#define SEC_MAP_BINS    "sec_bins"
#define SEC_MAP_CGROUPS "sec_cgroups"
#define SEC_MAP_SCRATCH "sec_scratch"
#define SEC_MAP_GUARD   "sec_gconf"
#define SEC_MAP_FILES   "sec_gfiles"
#define SEC_MAP_NET4    "sec_gnet4"
#define SEC_MAP_NET6    "sec_gnet6"
#define SEC_MAP_COUNTS  "sec_gcounts"
#define SEC_MAP_PORTS   "sec_gports"
#define SEC_MAP_EXITED  "sec_exited"
#define SEC_EXITED_MAX  16384
#define SEC_PORTS_MAX   1024
#define SEC_MAP_PATHS   "sec_paths"
#define SEC_MAP_PKEY    "sec_pkey"
#define SEC_PATHS_MAX   1024

#define SEC_RULES_MAX 64
#define SEC_FILES_MAX 4096
#define SEC_NETS_MAX  4096
#define SEC_DIR_DEPTH 24

#define SEC_PROCS_MAX 65536
#define SEC_PATH_MAX  256
#define SEC_ARGS_MAX  512
#define SEC_XID_TICK_NS 10000000ULL /* /proc starttime unit (USER_HZ 100) */

/* Hooks: sec_stats slots. */
#define SEC_HOOK_EXEC 0
#define SEC_HOOK_EXIT 1
#define SEC_HOOK_FORK 2
#define SEC_HOOK_CONNECT 3
#define SEC_HOOK_SETID 4
#define SEC_HOOK_PTRACE 5
#define SEC_HOOK_OPEN 6
#define SEC_HOOK_LISTEN 7
#define SEC_HOOK_MAX  8

/* Event types. */
#define SEC_EV_EXEC 1
#define SEC_EV_EXIT 2
#define SEC_EV_CONNECT 3
#define SEC_EV_SETID 4
#define SEC_EV_PTRACE 5
#define SEC_EV_OPEN 6 /* moat watch --file; guard open rules: userspace (fanotify) */
#define SEC_EV_LISTEN 7

/* Guard operations: struct sec_guard.op slots. */
#define SEC_OP_EXEC 0
#define SEC_OP_CONNECT 1    /* the cgroup hooks */
#define SEC_OP_CONNECT_TP 2 /* the syscall tracepoint (kill) */
#define SEC_OP_SETID 3
#define SEC_OP_PTRACE 4
#define SEC_OP_LISTEN 5    /* the cgroup post_bind hooks */
#define SEC_OP_LISTEN_TP 6 /* sys_enter_bind (kill) */
#define SEC_OP_MAX 7

/* Actions (struct sec_event.action). */
#define SEC_ACT_LOG 1
#define SEC_ACT_DENY 2
#define SEC_ACT_KILL 3

/* sec_config.flags */
#define SEC_CF_EXEC   1 /* emit exec events */
#define SEC_CF_EXIT   2 /* emit exit events */
#define SEC_CF_BINARY 4 /* only binaries in sec_bins */
#define SEC_CF_CGROUP 8 /* only tasks under sec_cgroups[0] */
#define SEC_CF_GUARD  16 /* a guard instance: keep the guard masks, match rules */
#define SEC_CF_OPEN   32 /* emit open events for paths in sec_paths */
#define SEC_CF_CONNECT 64 /* emit connect events (sys_enter_connect) */

/* sec_event.flags */
#define SEC_EF_ARGS_TRUNC 1 /* the arguments were longer than SEC_ARGS_MAX */
#define SEC_EF_NO_PARENT  2 /* the image's entry was not in sec_procs: parent from the task */
#define SEC_EF_MEMFD      4 /* the binary is a memfd or deleted file (exec of no path on disk) */
#define SEC_EF_TTY        8 /* the process had a controlling terminal at exec */

struct sec_xid {
	__u64 ns;
	__u32 pid;
	__u32 pad;
};

struct sec_proc {
	struct sec_xid xid;    /* this image */
	struct sec_xid parent; /* the image it replaced (exec) or was forked from */
	__u32 ppid;            /* the kernel's parent (real_parent->tgid) */
	__u32 uid;
	__u32 gid;
	__u32 flags;           /* SEC_EF_* of the exec that made it */
	__u64 cgroup;          /* cgroup v2 id at exec */
	/* Guard masks (rule bits), set at exec: */
	__u64 bin;             /* rules whose binary: names this image's file */
	__u64 notbin;          /* rules whose not_binary: names it */
	__u64 anc;             /* rules whose ancestor: names an image before it */
	__u64 selfanc;         /* rules whose ancestor: names this image's file */
	char comm[16];
	char binary[SEC_PATH_MAX];
};

struct sec_path_key {
	__u32 prefixlen; /* bits */
	char path[SEC_PATH_MAX];
};

struct sec_inode {
	__u64 ino;
	__u32 dev; /* the kernel's dev_t: major << 20 | minor */
	__u32 pad;
};

struct sec_masks {
	__u64 bin;
	__u64 notbin;
	__u64 anc;
	__u64 pad;
};

struct sec_net4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct sec_net6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct sec_net {
	__u64 remote;     /* rules whose remote: covers it */
	__u64 remote_not; /* rules whose remote_not: covers it */
};

struct sec_guard {
	__u64 op[SEC_OP_MAX];  /* rules the kernel enforces at each operation */
	__u64 need_bin;        /* rules with binary: */
	__u64 need_anc;        /* rules with ancestor: */
	__u64 need_cg;         /* rules with cgroup: */
	__u64 need_memfd;      /* rules with memfd: true */
	__u64 need_tty;        /* rules with tty: true */
	__u64 need_remote;     /* rules with remote: */
	__u64 need_port;       /* rules with port: (listen) */
	__u64 deny;            /* rules whose action is deny */
	__u64 kill;            /* rules whose action is kill */
	__u64 cg_id[SEC_RULES_MAX];    /* cgroup: the directory's cgroup id */
	__u32 cg_level[SEC_RULES_MAX]; /* and its depth below the root */
};

struct sec_rule_stat {
	__u64 matched; /* the rule matched an operation */
	__u64 acted;   /* denied or killed (log rules: = matched) */
	__u64 events;  /* events written */
	__u64 lost;    /* events lost (ring full) */
};

struct sec_stat {
	__u64 seen;
	__u64 matched;
	__u64 lost;
	__u64 pad;
};

struct sec_config {
	__u32 flags;
	__u32 pad;
};

struct sec_event {
	__u32 kind;      /* SEC_EV_* */
	__u32 pid;       /* tgid */
	__u32 tid;
	__u32 ppid;
	struct sec_xid xid;
	struct sec_xid parent;
	__u64 ktime;     /* boot clock, ns */
	__u64 cgroup;
	__u32 uid;
	__u32 gid;
	__u32 exit_code; /* exit: status (code >> 8) */
	__u32 signal;    /* exit: the signal that ended it, 0 if none */
	__u32 args_len;  /* exec: bytes of args (NUL separated) */
	__u32 flags;     /* SEC_EF_* */
	char comm[16];
	char binary[SEC_PATH_MAX];
	char args[SEC_ARGS_MAX];
	/* Guard events (rule != 0): */
	__u32 rule;      /* rule index + 1; 0: not a guard event */
	__u32 action;    /* SEC_ACT_* taken */
	__u32 family;    /* connect, listen: AF_INET, AF_INET6 */
	__u32 port;      /* connect: remote port; listen: local port (host order) */
	__u8 addr[16];   /* connect: remote, listen: local address (IPv4 in the first 4) */
	__u64 arg0;      /* setid: syscall nr; ptrace: request; open: flags */
	__u64 arg1;      /* setid: first argument; ptrace: target pid; open: syscall nr */
};

/* The ring-buffer record is not in the objects' BTF: its layout is pinned here
 * (MOAT_OFFSET_OF comes from abi/fw.h; moat-abi checks the same offsets). */
_Static_assert(MOAT_OFFSET_OF(sec_event, kind) == 0, "sec_event.kind");
_Static_assert(MOAT_OFFSET_OF(sec_event, pid) == 4, "sec_event.pid");
_Static_assert(MOAT_OFFSET_OF(sec_event, tid) == 8, "sec_event.tid");
_Static_assert(MOAT_OFFSET_OF(sec_event, ppid) == 12, "sec_event.ppid");
_Static_assert(MOAT_OFFSET_OF(sec_event, xid) == 16, "sec_event.xid");
_Static_assert(MOAT_OFFSET_OF(sec_event, parent) == 32, "sec_event.parent");
_Static_assert(MOAT_OFFSET_OF(sec_event, ktime) == 48, "sec_event.ktime");
_Static_assert(MOAT_OFFSET_OF(sec_event, cgroup) == 56, "sec_event.cgroup");
_Static_assert(MOAT_OFFSET_OF(sec_event, uid) == 64, "sec_event.uid");
_Static_assert(MOAT_OFFSET_OF(sec_event, gid) == 68, "sec_event.gid");
_Static_assert(MOAT_OFFSET_OF(sec_event, exit_code) == 72, "sec_event.exit_code");
_Static_assert(MOAT_OFFSET_OF(sec_event, signal) == 76, "sec_event.signal");
_Static_assert(MOAT_OFFSET_OF(sec_event, args_len) == 80, "sec_event.args_len");
_Static_assert(MOAT_OFFSET_OF(sec_event, flags) == 84, "sec_event.flags");
_Static_assert(MOAT_OFFSET_OF(sec_event, comm) == 88, "sec_event.comm");
_Static_assert(MOAT_OFFSET_OF(sec_event, binary) == 104, "sec_event.binary");
_Static_assert(MOAT_OFFSET_OF(sec_event, args) == 360, "sec_event.args");
_Static_assert(MOAT_OFFSET_OF(sec_event, rule) == 872, "sec_event.rule");
_Static_assert(MOAT_OFFSET_OF(sec_event, action) == 876, "sec_event.action");
_Static_assert(MOAT_OFFSET_OF(sec_event, family) == 880, "sec_event.family");
_Static_assert(MOAT_OFFSET_OF(sec_event, port) == 884, "sec_event.port");
_Static_assert(MOAT_OFFSET_OF(sec_event, addr) == 888, "sec_event.addr");
_Static_assert(MOAT_OFFSET_OF(sec_event, arg0) == 904, "sec_event.arg0");
_Static_assert(MOAT_OFFSET_OF(sec_event, arg1) == 912, "sec_event.arg1");
_Static_assert(sizeof(struct sec_event) == 920, "sec_event size");

#endif /* MOAT_ABI_SEC_H */
