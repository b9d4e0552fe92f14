/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * sec.bpf.c — runtime security, first part: the process table and the exec
 * and exit events. tp_btf/sched_process_{exec,fork,exit} (this kernel has no
 * kprobes and refuses fentry and BPF LSM; tracepoints load). The kernel
 * keeps who each process is (sec_procs: exec id, parent image, binary,
 * credentials, cgroup); userspace reads events and walks the lineage.
 * Filters (event kinds, binaries, cgroup subtree) run here, before the ring
 * buffer: a filtered-out exec costs a lookup, no event. Every matched event
 * is either written or counted lost, per hook. Maps and structs: abi/sec.h.
 *
 * GPL: bpf_probe_read_user_str and bpf_current_task_under_cgroup are
 * GPL-only helpers.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "../common/abi.h"

/* The kernel's types, only the fields read here (CO-RE relocates them). */
struct kuid_s { __u32 val; } __attribute__((preserve_access_index));
typedef struct kuid_s kuid_t;
typedef struct kuid_s kgid_t;
struct cred {
	kuid_t uid;
	kgid_t gid;
} __attribute__((preserve_access_index));
struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
} __attribute__((preserve_access_index));
typedef struct { int counter; } atomic_t;
struct tty_struct;
struct signal_struct {
	struct tty_struct *tty;
	atomic_t live;
	int group_exit_code;
	unsigned int flags;
} __attribute__((preserve_access_index));
struct task_struct {
	int pid;
	int tgid;
	int exit_code;
	unsigned long long start_boottime;
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	const struct cred *cred;
	struct mm_struct *mm;
	struct signal_struct *signal;
	char comm[16];
} __attribute__((preserve_access_index));
struct super_block {
	unsigned int s_dev;
} __attribute__((preserve_access_index));
struct inode {
	unsigned int i_nlink;
	unsigned long i_ino;
	struct super_block *i_sb;
} __attribute__((preserve_access_index));
struct dentry {
	struct dentry *d_parent;
	struct inode *d_inode;
} __attribute__((preserve_access_index));
struct path {
	struct dentry *dentry;
} __attribute__((preserve_access_index));
struct file {
	struct path f_path;
} __attribute__((preserve_access_index));
struct linux_binprm {
	struct file *file;
	const char *filename;
} __attribute__((preserve_access_index));

#define SIGNAL_GROUP_EXIT 0x00000004
#define SIGKILL 9
#define AF_INET 2
#define AF_INET6 10
#define PTRACE_ATTACH 16
#define PTRACE_SEIZE 0x4206

/* A syscalls/sys_enter_* tracepoint's record. */
struct sys_enter_ctx {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 args[6];
};

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SEC_PROCS_MAX);
	__type(key, __u32);
	__type(value, struct sec_proc);
} sec_procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} sec_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SEC_HOOK_MAX);
	__type(key, __u32);
	__type(value, struct sec_stat);
} sec_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sec_config);
} sec_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__uint(key_size, SEC_PATH_MAX);
	__uint(value_size, 1);
} sec_bins SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} sec_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sec_proc);
} sec_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sec_guard);
} sec_gconf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SEC_FILES_MAX);
	__type(key, struct sec_inode);
	__type(value, struct sec_masks);
} sec_gfiles SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SEC_NETS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sec_net4_key);
	__type(value, struct sec_net);
} sec_gnet4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SEC_NETS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sec_net6_key);
	__type(value, struct sec_net);
} sec_gnet6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SEC_RULES_MAX);
	__type(key, __u32);
	__type(value, struct sec_rule_stat);
} sec_gcounts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SEC_PATHS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sec_path_key);
	__type(value, __u8);
} sec_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sec_path_key);
} sec_pkey SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SEC_EXITED_MAX);
	__type(key, struct sec_xid);
	__type(value, struct sec_proc);
} sec_exited SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SEC_PORTS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} sec_gports SEC(".maps");

static __always_inline struct sec_stat *sec_stat(__u32 hook)
{
	return bpf_map_lookup_elem(&sec_stats, &hook);
}

static __always_inline __u32 sec_flags(void)
{
	__u32 zero = 0;
	const struct sec_config *c = bpf_map_lookup_elem(&sec_config, &zero);

	return c ? c->flags : 0;
}

/* The exec id of a process known only from its task (see abi/sec.h). */
static __always_inline void sec_task_xid(struct task_struct *t, struct sec_xid *x)
{
	__u64 start = BPF_CORE_READ(t, start_boottime);

	x->ns = start - start % SEC_XID_TICK_NS;
	x->pid = BPF_CORE_READ(t, tgid);
	x->pad = 0;
}

/* Passes the event filters of the config (binary filter: `bin` names it). */
static __always_inline int sec_wanted(__u32 flags, const char *bin)
{
	if ((flags & SEC_CF_CGROUP) && bpf_current_task_under_cgroup(&sec_cgroups, 0) != 1)
		return 0;
	if ((flags & SEC_CF_BINARY) && !bpf_map_lookup_elem(&sec_bins, bin))
		return 0;
	return 1;
}

/* Submits an event, waking the reader only once a sixteenth of the ring
 * is waiting: a wakeup per event would cost more than the event (the
 * reader also looks every 100 ms, so an event is at most that late). */
static __always_inline void sec_submit(struct sec_event *ev)
{
	__u64 avail = bpf_ringbuf_query(&sec_events, BPF_RB_AVAIL_DATA);
	__u64 size = bpf_ringbuf_query(&sec_events, BPF_RB_RING_SIZE);

	/* A guard rule's event at once: its reader names the ancestors from
	 * the process table, which a parent's exit would empty meanwhile. */
	bpf_ringbuf_submit(ev, (ev->rule || avail >= size / 16) ? BPF_RB_FORCE_WAKEUP
								 : BPF_RB_NO_WAKEUP);
}

/* Fills the fields every event has from the image `e` (NULL: unknown). */
static __always_inline void sec_fill_event(struct sec_event *ev, __u32 kind,
					   const struct sec_proc *e, __u64 pid_tgid)
{
	__builtin_memset(ev, 0, __builtin_offsetof(struct sec_event, args));
	__builtin_memset(&ev->rule, 0, sizeof(*ev) - __builtin_offsetof(struct sec_event, rule));
	ev->kind = kind;
	ev->pid = pid_tgid >> 32;
	ev->tid = (__u32)pid_tgid;
	ev->ktime = bpf_ktime_get_boot_ns();
	if (!e)
		return;
	ev->ppid = e->ppid;
	ev->xid = e->xid;
	ev->parent = e->parent;
	ev->cgroup = e->cgroup;
	ev->uid = e->uid;
	ev->gid = e->gid;
	ev->flags = e->flags;
	__builtin_memcpy(ev->comm, e->comm, sizeof(ev->comm));
	__builtin_memcpy(ev->binary, e->binary, sizeof(ev->binary));
}

static __always_inline const struct sec_guard *sec_guard(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sec_gconf, &zero);
}

/* ORs the guard masks of a file and of the directories above it on its
 * filesystem (a `binary:` prefix names a directory). */
static __always_inline void sec_file_masks(struct dentry *d, struct sec_proc *e)
{
	struct sec_inode k = {};
	int i;

	for (i = 0; i < SEC_DIR_DEPTH; i++) {
		struct inode *in;
		const struct sec_masks *m;
		struct dentry *up;

		if (!d)
			break;
		in = BPF_CORE_READ(d, d_inode);
		if (!in)
			break;
		k.ino = BPF_CORE_READ(in, i_ino);
		k.dev = BPF_CORE_READ(in, i_sb, s_dev);
		m = bpf_map_lookup_elem(&sec_gfiles, &k);
		if (m) {
			e->bin |= m->bin;
			e->notbin |= m->notbin;
			e->selfanc |= m->anc;
		}
		up = BPF_CORE_READ(d, d_parent);
		if (up == d)
			break;
		d = up;
	}
}

struct sec_cg {
	const struct sec_guard *g;
	__u64 cand;
	__u64 cg;
};

static long sec_cg_step(__u64 i, void *ctx)
{
	struct sec_cg *c = ctx;
	__u32 j = i & (SEC_RULES_MAX - 1);

	if (!c->cg)
		return 1;
	if (!(c->cg & (1ULL << j)))
		return 0;
	c->cg &= ~(1ULL << j);
	if (bpf_get_current_ancestor_cgroup_id(c->g->cg_level[j]) != c->g->cg_id[j])
		c->cand &= ~(1ULL << j);
	return 0;
}

/* Of the rules `cand`, those whose process conditions hold for an image
 * with masks bin/notbin, ancestors anc and SEC_EF_* flags (memfd-backed,
 * with a terminal). */
static __always_inline __u64 sec_match(const struct sec_guard *g, __u64 cand, __u64 bin,
				       __u64 notbin, __u64 anc, __u32 flags)
{
	struct sec_cg c = { .g = g };

	cand &= ~g->need_bin | bin;
	cand &= ~notbin;
	cand &= ~g->need_anc | anc;
	if (!(flags & SEC_EF_MEMFD))
		cand &= ~g->need_memfd;
	if (!(flags & SEC_EF_TTY))
		cand &= ~g->need_tty;
	c.cand = cand;
	c.cg = cand & g->need_cg;
	if (c.cg)
		bpf_loop(SEC_RULES_MAX, sec_cg_step, &c, 0);
	return c.cand;
}

struct sec_vd {
	const struct sec_guard *g;
	__u64 hit;
	__u32 act;
	__u32 rule;
};

static long sec_verdict_step(__u64 i, void *ctx)
{
	struct sec_vd *v = ctx;
	__u32 j = i & (SEC_RULES_MAX - 1), a;
	struct sec_rule_stat *rs;

	if (!v->hit)
		return 1;
	if (!(v->hit & (1ULL << j)))
		return 0;
	v->hit &= ~(1ULL << j);
	a = (v->g->kill & (1ULL << j)) ? SEC_ACT_KILL :
	    (v->g->deny & (1ULL << j)) ? SEC_ACT_DENY : SEC_ACT_LOG;
	rs = bpf_map_lookup_elem(&sec_gcounts, &j);
	if (rs) {
		__sync_fetch_and_add(&rs->matched, 1);
		__sync_fetch_and_add(&rs->acted, 1);
	}
	if (a > v->act) {
		v->act = a;
		v->rule = j;
	}
	return 0;
}

/* Counts every rule in `hit` and returns the strongest action among them
 * (kill > deny > log); *rule is the first rule with it. */
static __always_inline __u32 sec_verdict(const struct sec_guard *g, __u64 hit, __u32 *rule)
{
	struct sec_vd v = { .g = g, .hit = hit };

	bpf_loop(SEC_RULES_MAX, sec_verdict_step, &v, 0);
	*rule = v.rule;
	return v.act;
}

/* The event of rule `rule` was written (or lost). */
static __always_inline void sec_rule_event(__u32 rule, int written)
{
	struct sec_rule_stat *rs = bpf_map_lookup_elem(&sec_gcounts, &rule);

	if (rs) {
		if (written)
			__sync_fetch_and_add(&rs->events, 1);
		else
			__sync_fetch_and_add(&rs->lost, 1);
	}
}

/* A guard operation other than exec (connect, setid, ptrace) by the
 * current process: matches, counts, emits the event and returns the action
 * (0: no rule matched). `net` is the remote's LPM entry (connect only). */
static __always_inline __u32 sec_guard_op(__u32 op, __u32 kind, __u32 hook,
					  const struct sec_net *net, __u32 family,
					  const __u8 *addr, __u32 port, __u64 arg0, __u64 arg1)
{
	__u64 portm = 0;

	if (op == SEC_OP_LISTEN || op == SEC_OP_LISTEN_TP) {
		const __u64 *pm = bpf_map_lookup_elem(&sec_gports, &port);

		portm = pm ? *pm : 0;
	}
	const struct sec_guard *g = sec_guard();
	struct sec_stat *st = sec_stat(hook);
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32, rule = 0, act;
	const struct sec_proc *img;
	struct sec_event *ev;
	__u64 cand, hit;

	if (st)
		st->seen++;
	if (!g || !g->op[op])
		return 0;
	cand = g->op[op];
	cand &= ~g->need_port | portm;
	cand &= ~g->need_remote | (net ? net->remote : 0);
	if (net)
		cand &= ~net->remote_not;
	if (!cand)
		return 0;
	img = bpf_map_lookup_elem(&sec_procs, &tgid);
	if (img)
		hit = sec_match(g, cand, img->bin, img->notbin, img->anc, img->flags);
	else
		hit = sec_match(g, cand, 0, 0, 0, 0);
	if (!hit)
		return 0;
	act = sec_verdict(g, hit, &rule);
	if (st)
		st->matched++;
	ev = bpf_ringbuf_reserve(&sec_events, sizeof(*ev), 0);
	if (!ev) {
		if (st)
			st->lost++;
		sec_rule_event(rule, 0);
		return act;
	}
	sec_fill_event(ev, kind, img, pid_tgid);
	ev->rule = rule + 1;
	ev->action = act;
	ev->family = family;
	ev->port = port;
	if (addr)
		__builtin_memcpy(ev->addr, addr, 16);
	ev->arg0 = arg0;
	ev->arg1 = arg1;
	sec_submit(ev);
	sec_rule_event(rule, 1);
	return act;
}

/* The cgroup filter of the config for the current task (no binary filter). */
static __always_inline int sec_wanted_current(__u32 flags)
{
	return !(flags & SEC_CF_CGROUP) || bpf_current_task_under_cgroup(&sec_cgroups, 0) == 1;
}

SEC("tp_btf/sched_process_fork")
int sec_fork(unsigned long long *ctx)
{
	struct task_struct *parent = (struct task_struct *)ctx[0];
	struct task_struct *child = (struct task_struct *)ctx[1];
	struct sec_stat *st = sec_stat(SEC_HOOK_FORK);
	__u32 zero = 0, ptgid, ctgid;
	struct sec_proc *e, *pe;

	ctgid = BPF_CORE_READ(child, tgid);
	if (BPF_CORE_READ(child, pid) != (int)ctgid)
		return 0; /* a new thread, not a new process */
	if (st)
		st->seen++;
	e = bpf_map_lookup_elem(&sec_scratch, &zero);
	if (!e)
		return 0;
	ptgid = BPF_CORE_READ(parent, tgid);
	pe = bpf_map_lookup_elem(&sec_procs, &ptgid);
	if (pe) {
		/* The child runs its parent's image. */
		__builtin_memcpy(e, pe, sizeof(*e));
	} else {
		__builtin_memset(e, 0, sizeof(*e));
		sec_task_xid(parent, &e->xid);
		sec_task_xid(BPF_CORE_READ(parent, real_parent), &e->parent);
		e->flags = SEC_EF_NO_PARENT;
		e->uid = BPF_CORE_READ(child, cred, uid.val);
		e->gid = BPF_CORE_READ(child, cred, gid.val);
	}
	e->ppid = ptgid;
	BPF_CORE_READ_STR_INTO(&e->comm, child, comm);
	bpf_map_update_elem(&sec_procs, &ctgid, e, BPF_ANY);
	if (st)
		st->matched++;
	return 0;
}

SEC("tp_btf/sched_process_exec")
int sec_exec(unsigned long long *ctx)
{
	struct task_struct *p = (struct task_struct *)ctx[0];
	struct linux_binprm *bprm = (struct linux_binprm *)ctx[2];
	struct sec_stat *st = sec_stat(SEC_HOOK_EXEC);
	__u32 zero = 0, tgid, flags = sec_flags();
	struct sec_proc *e, *old;
	const struct sec_guard *g;
	struct sec_event *ev;
	__u32 rule = 0, act = 0;
	const char *fname;
	__u64 hit;
	unsigned long a0, a1;
	__u32 len;
	long n;

	if (st)
		st->seen++;
	e = bpf_map_lookup_elem(&sec_scratch, &zero);
	if (!e)
		return 0;
	tgid = BPF_CORE_READ(p, tgid);
	__builtin_memset(e, 0, sizeof(*e));
	old = bpf_map_lookup_elem(&sec_procs, &tgid);
	if (old) {
		e->parent = old->xid; /* the image this exec replaces */
		/* It ends here without an exit: keep it nameable as an ancestor. */
		bpf_map_update_elem(&sec_exited, &old->xid, old, BPF_ANY);
	} else {
		sec_task_xid(p, &e->parent);
		e->flags |= SEC_EF_NO_PARENT;
	}
	e->xid.ns = bpf_ktime_get_boot_ns();
	e->xid.pid = tgid;
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	e->uid = BPF_CORE_READ(p, cred, uid.val);
	e->gid = BPF_CORE_READ(p, cred, gid.val);
	e->cgroup = bpf_get_current_cgroup_id();
	BPF_CORE_READ_STR_INTO(&e->comm, p, comm);
	fname = BPF_CORE_READ(bprm, filename);
	bpf_probe_read_kernel_str(e->binary, sizeof(e->binary), fname);
	if (BPF_CORE_READ(bprm, file, f_path.dentry, d_inode, i_nlink) == 0)
		e->flags |= SEC_EF_MEMFD;
	if (BPF_CORE_READ(p, signal, tty))
		e->flags |= SEC_EF_TTY;
	if (flags & SEC_CF_GUARD) {
		/* The image it replaced and that one's ancestors are this one's. */
		if (old)
			e->anc = old->anc | old->selfanc;
		sec_file_masks(BPF_CORE_READ(bprm, file, f_path.dentry), e);
	}
	bpf_map_update_elem(&sec_procs, &tgid, e, BPF_ANY);

	g = sec_guard();
	if ((flags & SEC_CF_GUARD) && g && g->op[SEC_OP_EXEC]) {
		hit = sec_match(g, g->op[SEC_OP_EXEC], e->bin, e->notbin, e->anc, e->flags);
		if (hit) {
			act = sec_verdict(g, hit, &rule);
			if (act == SEC_ACT_KILL)
				bpf_send_signal(SIGKILL);
		}
	}
	if (!act && (!(flags & SEC_CF_EXEC) || !sec_wanted(flags, e->binary)))
		return 0;
	if (st)
		st->matched++;
	ev = bpf_ringbuf_reserve(&sec_events, sizeof(*ev), 0);
	if (!ev) {
		if (st)
			st->lost++;
		if (act)
			sec_rule_event(rule, 0);
		return 0;
	}
	sec_fill_event(ev, SEC_EV_EXEC, e, ((__u64)tgid << 32) | (__u32)BPF_CORE_READ(p, pid));
	ev->ktime = e->xid.ns;
	if (act) {
		ev->rule = rule + 1;
		ev->action = act;
		sec_rule_event(rule, 1);
	}
	/* The new image's arguments, NUL separated, as far as they fit. */
	a0 = BPF_CORE_READ(p, mm, arg_start);
	a1 = BPF_CORE_READ(p, mm, arg_end);
	n = a1 > a0 ? (long)(a1 - a0) : 0;
	/* At most SEC_ARGS_MAX - 1 bytes: the mask below is what the
	 * verifier needs to see the bound on the very register passed. */
	if (n > SEC_ARGS_MAX - 1) {
		n = SEC_ARGS_MAX - 1;
		ev->flags |= SEC_EF_ARGS_TRUNC;
	}
	len = (__u32)n;
	ev->args_len = 0;
	if (bpf_probe_read_user(ev->args, len & (SEC_ARGS_MAX - 1), (const void *)a0) == 0)
		ev->args_len = len & (SEC_ARGS_MAX - 1);
	sec_submit(ev);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int sec_exit(unsigned long long *ctx)
{
	struct task_struct *p = (struct task_struct *)ctx[0];
	struct sec_stat *st;
	__u32 tgid, flags;
	struct sec_proc *e;
	struct sec_event *ev;
	int code;

	/* The process ends with its last thread. */
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	st = sec_stat(SEC_HOOK_EXIT);
	if (st)
		st->seen++;
	tgid = BPF_CORE_READ(p, tgid);
	flags = sec_flags();
	e = bpf_map_lookup_elem(&sec_procs, &tgid);
	if ((flags & SEC_CF_EXIT) && e && sec_wanted(flags, e->binary)) {
		if (st)
			st->matched++;
		ev = bpf_ringbuf_reserve(&sec_events, sizeof(*ev), 0);
		if (!ev) {
			if (st)
				st->lost++;
		} else {
			if (BPF_CORE_READ(p, signal, flags) & SIGNAL_GROUP_EXIT)
				code = BPF_CORE_READ(p, signal, group_exit_code);
			else
				code = BPF_CORE_READ(p, exit_code);
			sec_fill_event(ev, SEC_EV_EXIT, e,
				       ((__u64)tgid << 32) | (__u32)BPF_CORE_READ(p, pid));
			ev->ppid = BPF_CORE_READ(p, real_parent, tgid);
			ev->exit_code = (code >> 8) & 0xff;
			ev->signal = code & 0x7f;
			sec_submit(ev);
		}
	}
	if (e)
		bpf_map_update_elem(&sec_exited, &e->xid, e, BPF_ANY);
	bpf_map_delete_elem(&sec_procs, &tgid);
	return 0;
}

/* Guard: connect (cgroup hooks: log and deny; EPERM to the caller). */
SEC("cgroup/connect4")
int sec_connect4(struct bpf_sock_addr *ctx)
{
	struct sec_net4_key k = { .prefixlen = 32 };
	__u8 addr[16] = {};
	__u32 ip = ctx->user_ip4;
	__u32 port = bpf_ntohs((__u16)ctx->user_port);

	__builtin_memcpy(k.addr, &ip, 4);
	__builtin_memcpy(addr, &ip, 4);
	if (sec_guard_op(SEC_OP_CONNECT, SEC_EV_CONNECT, SEC_HOOK_CONNECT,
			 bpf_map_lookup_elem(&sec_gnet4, &k), AF_INET, addr, port,
			 ctx->protocol, 0) == SEC_ACT_DENY)
		return 0;
	return 1;
}

SEC("cgroup/connect6")
int sec_connect6(struct bpf_sock_addr *ctx)
{
	struct sec_net6_key k = { .prefixlen = 128 };
	__u32 ip[4];
	__u32 port = bpf_ntohs((__u16)ctx->user_port);

	ip[0] = ctx->user_ip6[0];
	ip[1] = ctx->user_ip6[1];
	ip[2] = ctx->user_ip6[2];
	ip[3] = ctx->user_ip6[3];
	__builtin_memcpy(k.addr, ip, 16);
	if (sec_guard_op(SEC_OP_CONNECT, SEC_EV_CONNECT, SEC_HOOK_CONNECT,
			 bpf_map_lookup_elem(&sec_gnet6, &k), AF_INET6, (const __u8 *)ip, port,
			 ctx->protocol, 0) == SEC_ACT_DENY)
		return 0;
	return 1;
}

/* Guard: connect, kill rules (a signal needs a tracing program). */
SEC("tracepoint/syscalls/sys_enter_connect")
int sec_connect_tp(struct sys_enter_ctx *ctx)
{
	struct {
		__u16 family;
		__u16 port;
		__u32 flow; /* sockaddr_in: the IPv4 address; sockaddr_in6: flowinfo */
		__u8 addr6[16];
	} sa = {};
	__u8 addr[16] = {};
	const struct sec_net *net = 0;
	__u32 family, flags = sec_flags();

	if (bpf_probe_read_user(&sa, sizeof(sa.family) + sizeof(sa.port) + sizeof(sa.flow),
				(const void *)ctx->args[1]))
		return 0;
	family = sa.family;
	if (family == AF_INET) {
		struct sec_net4_key k = { .prefixlen = 32 };

		__builtin_memcpy(k.addr, &sa.flow, 4);
		__builtin_memcpy(addr, &sa.flow, 4);
		net = bpf_map_lookup_elem(&sec_gnet4, &k);
	} else if (family == AF_INET6) {
		struct sec_net6_key k = { .prefixlen = 128 };

		if (bpf_probe_read_user(&sa, sizeof(sa), (const void *)ctx->args[1]))
			return 0;
		__builtin_memcpy(k.addr, sa.addr6, 16);
		__builtin_memcpy(addr, sa.addr6, 16);
		net = bpf_map_lookup_elem(&sec_gnet6, &k);
	} else {
		return 0;
	}
	if ((flags & SEC_CF_CONNECT) && sec_wanted_current(flags)) {
		struct sec_stat *st = sec_stat(SEC_HOOK_CONNECT);
		struct sec_event *ev;
		__u64 pid_tgid = bpf_get_current_pid_tgid();
		__u32 tgid = pid_tgid >> 32;

		if (st)
			st->matched++;
		ev = bpf_ringbuf_reserve(&sec_events, sizeof(*ev), 0);
		if (!ev) {
			if (st)
				st->lost++;
		} else {
			sec_fill_event(ev, SEC_EV_CONNECT, bpf_map_lookup_elem(&sec_procs, &tgid),
				       pid_tgid);
			ev->family = family;
			ev->port = bpf_ntohs(sa.port);
			__builtin_memcpy(ev->addr, addr, 16);
			sec_submit(ev);
		}
	}
	if (sec_guard_op(SEC_OP_CONNECT_TP, SEC_EV_CONNECT, SEC_HOOK_CONNECT, net, family, addr,
			 bpf_ntohs(sa.port), 0, 0) == SEC_ACT_KILL)
		bpf_send_signal(SIGKILL);
	return 0;
}

#define NR_open 2
#define NR_creat 85
#define NR_openat 257
#define NR_openat2 437

/* moat watch --file: opens whose path (as given, when absolute) is under a
 * watched prefix. tp_btf/sys_enter: called for every syscall, but straight
 * from the raw tracepoint (no perf record is built) and it reads the
 * syscall's registers directly; anything but open, openat, openat2 and
 * creat returns at once (x86-64 syscall numbers). */
struct pt_regs {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
} __attribute__((preserve_access_index));

SEC("tp_btf/sys_enter")
int sec_open(unsigned long long *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	long id = (long)ctx[1];
	struct sec_stat *st;
	__u32 zero = 0, flags, tgid;
	struct sec_path_key *k;
	const char *name;
	struct sec_event *ev;
	__u64 oflags = 0, pid_tgid;
	long n;

	switch (id) {
	case NR_open:
		name = (const char *)regs->di;
		oflags = regs->si;
		break;
	case NR_creat:
		name = (const char *)regs->di;
		oflags = 01 | 0100 | 01000; /* O_WRONLY | O_CREAT | O_TRUNC */
		break;
	case NR_openat:
		name = (const char *)regs->si;
		oflags = regs->dx;
		break;
	case NR_openat2:
		name = (const char *)regs->si;
		bpf_probe_read_user(&oflags, sizeof(oflags), (const void *)regs->dx);
		break;
	default:
		return 0;
	}
	st = sec_stat(SEC_HOOK_OPEN);
	if (st)
		st->seen++;
	flags = sec_flags();
	if (!(flags & SEC_CF_OPEN))
		return 0;
	k = bpf_map_lookup_elem(&sec_pkey, &zero);
	if (!k)
		return 0;
	n = bpf_probe_read_user_str(k->path, sizeof(k->path), name);
	if (n <= 1 || k->path[0] != '/')
		return 0; /* relative to a directory: not resolved here */
	k->prefixlen = (__u32)n * 8;
	if (!bpf_map_lookup_elem(&sec_paths, k))
		return 0;
	if ((flags & SEC_CF_CGROUP) && bpf_current_task_under_cgroup(&sec_cgroups, 0) != 1)
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	tgid = pid_tgid >> 32;
	if (st)
		st->matched++;
	ev = bpf_ringbuf_reserve(&sec_events, sizeof(*ev), 0);
	if (!ev) {
		if (st)
			st->lost++;
		return 0;
	}
	sec_fill_event(ev, SEC_EV_OPEN, bpf_map_lookup_elem(&sec_procs, &tgid), pid_tgid);
	__builtin_memcpy(ev->args, k->path, SEC_PATH_MAX);
	ev->args_len = (__u32)n - 1;
	ev->arg0 = oflags;
	ev->arg1 = id;
	sec_submit(ev);
	return 0;
}

/* Guard: privilege changes (setuid family, capset): log, kill. Attached
 * to every sys_enter_set*id and sys_enter_capset tracepoint. */
SEC("tracepoint/syscalls/sys_enter_setuid")
int sec_setid(struct sys_enter_ctx *ctx)
{
	if (sec_guard_op(SEC_OP_SETID, SEC_EV_SETID, SEC_HOOK_SETID, 0, 0, 0, 0, ctx->nr,
			 ctx->args[0]) == SEC_ACT_KILL)
		bpf_send_signal(SIGKILL);
	return 0;
}

/* Guard: ptrace attach (PTRACE_ATTACH, PTRACE_SEIZE): log, kill. */
SEC("tracepoint/syscalls/sys_enter_ptrace")
int sec_ptrace(struct sys_enter_ctx *ctx)
{
	__u64 req = ctx->args[0];

	if (req != PTRACE_ATTACH && req != PTRACE_SEIZE)
		return 0;
	if (sec_guard_op(SEC_OP_PTRACE, SEC_EV_PTRACE, SEC_HOOK_PTRACE, 0, 0, 0, 0, req,
			 ctx->args[1]) == SEC_ACT_KILL)
		bpf_send_signal(SIGKILL);
	return 0;
}

/* Guard: listen (binds of a local port): log and deny at cgroup/post_bind
 * (the bind fails with EPERM, so nothing listens). */
SEC("cgroup/post_bind4")
int sec_bind4(struct bpf_sock *ctx)
{
	__u8 addr[16] = {};
	__u32 ip = ctx->src_ip4;
	__u32 port = ctx->src_port;

	__builtin_memcpy(addr, &ip, 4);
	if (sec_guard_op(SEC_OP_LISTEN, SEC_EV_LISTEN, SEC_HOOK_LISTEN, 0, AF_INET, addr, port,
			 ctx->protocol, 0) == SEC_ACT_DENY)
		return 0;
	return 1;
}

SEC("cgroup/post_bind6")
int sec_bind6(struct bpf_sock *ctx)
{
	__u32 ip[4];
	__u32 port = ctx->src_port;

	ip[0] = ctx->src_ip6[0];
	ip[1] = ctx->src_ip6[1];
	ip[2] = ctx->src_ip6[2];
	ip[3] = ctx->src_ip6[3];
	if (sec_guard_op(SEC_OP_LISTEN, SEC_EV_LISTEN, SEC_HOOK_LISTEN, 0, AF_INET6,
			 (const __u8 *)ip, port, ctx->protocol, 0) == SEC_ACT_DENY)
		return 0;
	return 1;
}

/* Guard: listen, kill rules: at bind(2) of a matching port. */
SEC("tracepoint/syscalls/sys_enter_bind")
int sec_bind_tp(struct sys_enter_ctx *ctx)
{
	struct {
		__u16 family;
		__u16 port;
		__u32 flow;
		__u8 addr6[16];
	} sa = {};
	__u8 addr[16] = {};
	__u32 family;

	if (bpf_probe_read_user(&sa, sizeof(sa.family) + sizeof(sa.port) + sizeof(sa.flow),
				(const void *)ctx->args[1]))
		return 0;
	family = sa.family;
	if (family == AF_INET) {
		__builtin_memcpy(addr, &sa.flow, 4);
	} else if (family == AF_INET6) {
		if (bpf_probe_read_user(&sa, sizeof(sa), (const void *)ctx->args[1]))
			return 0;
		__builtin_memcpy(addr, sa.addr6, 16);
	} else {
		return 0;
	}
	if (sec_guard_op(SEC_OP_LISTEN_TP, SEC_EV_LISTEN, SEC_HOOK_LISTEN, 0, family, addr,
			 bpf_ntohs(sa.port), 0, 0) == SEC_ACT_KILL)
		bpf_send_signal(SIGKILL);
	return 0;
}
