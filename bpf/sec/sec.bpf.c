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
struct signal_struct {
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
struct inode {
	unsigned int i_nlink;
} __attribute__((preserve_access_index));
struct dentry {
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
	struct sec_event *ev;
	const char *fname;
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
	bpf_map_update_elem(&sec_procs, &tgid, e, BPF_ANY);

	if (!(flags & SEC_CF_EXEC) || !sec_wanted(flags, e->binary))
		return 0;
	if (st)
		st->matched++;
	ev = bpf_ringbuf_reserve(&sec_events, sizeof(*ev), 0);
	if (!ev) {
		if (st)
			st->lost++;
		return 0;
	}
	ev->kind = SEC_EV_EXEC;
	ev->pid = tgid;
	ev->tid = BPF_CORE_READ(p, pid);
	ev->ppid = e->ppid;
	ev->xid = e->xid;
	ev->parent = e->parent;
	ev->ktime = e->xid.ns;
	ev->cgroup = e->cgroup;
	ev->uid = e->uid;
	ev->gid = e->gid;
	ev->exit_code = 0;
	ev->signal = 0;
	ev->flags = e->flags;
	__builtin_memcpy(ev->comm, e->comm, sizeof(ev->comm));
	__builtin_memcpy(ev->binary, e->binary, sizeof(ev->binary));
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
	bpf_ringbuf_submit(ev, 0);
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
			ev->kind = SEC_EV_EXIT;
			ev->pid = tgid;
			ev->tid = BPF_CORE_READ(p, pid);
			ev->ppid = BPF_CORE_READ(p, real_parent, tgid);
			ev->xid = e->xid;
			ev->parent = e->parent;
			ev->ktime = bpf_ktime_get_boot_ns();
			ev->cgroup = e->cgroup;
			ev->uid = e->uid;
			ev->gid = e->gid;
			ev->exit_code = (code >> 8) & 0xff;
			ev->signal = code & 0x7f;
			ev->args_len = 0;
			ev->flags = e->flags;
			__builtin_memcpy(ev->comm, e->comm, sizeof(ev->comm));
			__builtin_memcpy(ev->binary, e->binary, sizeof(ev->binary));
			bpf_ringbuf_submit(ev, 0);
		}
	}
	bpf_map_delete_elem(&sec_procs, &tgid);
	return 0;
}
