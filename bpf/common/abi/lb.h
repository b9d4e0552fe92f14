/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* abi/lb.h — the L4 load balancer. Included through ../abi.h; rules there. */
#ifndef MOAT_ABI_LB_H
#define MOAT_ABI_LB_H

#include <linux/types.h>

/* ---------------------------------------------------------------------------
 * lb — L4 load balancer at XDP (bpf/lb/lb.bpf.c)
 *
 * Per packet: parse; {dst, dport, proto} (else {dst, 0, proto}: an any-port
 * VIP) in lb_vips gives the service. Its connection {client, vip, ports,
 * proto} in lb_ct keeps the backend it got (as long as that backend exists
 * in lb_backends for the same service: up, down or draining); else the flow
 * hash (fields chosen per service, lb_flow_hash below, mirrored by
 * moat-core::lb::hash) picks a slot of the service's Maglev table
 * (lb_maglev, built in moat-core::lb::maglev over the backends that are up
 * with weight > 0), which names a backend slot. NAT rewrites the
 * destination (address, port) and remembers the reverse in lb_rev, so the
 * backend's replies get the VIP back as source; DSR keeps the packet and only
 * sends it to the backend's MAC. The output goes by bpf_fib_lookup: XDP_TX or
 * XDP_REDIRECT with the neighbour's MAC, or XDP_PASS (kernel forwarding) when
 * the neighbour is not known yet (NAT; DSR drops: the kernel cannot route a
 * VIP it does not hold). Anything else passes untouched.
 * ------------------------------------------------------------------------- */

#define LB_PROG_XDP "lb_xdp"
#define LB_PIN_DIR  "lb"

/*
 * lb_vips: BPF_MAP_TYPE_HASH, per instance
 *   key: struct lb_vip_key; value: struct lb_vip
 *   One entry per service ({vip, port or 0, proto}) and one per VIP address
 *   for ICMP echo ({vip, 0, IPPROTO_ICMP/ICMPV6}, flags LB_VIP_ECHO).
 *   writer: moat lb apply; reader: lb_xdp
 */
#define LB_MAP_VIPS "lb_vips"
/*
 * lb_back: BPF_MAP_TYPE_HASH, per instance
 *   key: struct lb_vip_key {backend address, source port of its replies (0:
 *   any), proto, family}; value: struct lb_back (the VIP and port its replies
 *   come from). NAT replies find their VIP here and are checked against the
 *   connection in lb_ct, so a new connection writes one map entry, not two.
 *   A backend whose replies could belong to two VIPs (the same address and
 *   port in two services) is flagged LB_BACK_AMBIG here and LB_BF_REV in
 *   lb_backends: its connections keep per-connection entries in lb_rev.
 */
#define LB_MAP_BACK "lb_back"
#define LB_BACK_AMBIG 1
/*
 * lb_maglev: BPF_MAP_TYPE_ARRAY (BPF_F_MMAPABLE), per instance, table_size entries per service
 *   key: __u32 table_off + hash % table_size; value: __u32 backend slot or LB_NONE
 */
#define LB_MAP_MAGLEV "lb_maglev"
/*
 * lb_backends: BPF_MAP_TYPE_ARRAY of LB_MAX_BACKENDS, pinned (shared by instances)
 *   key: __u32 slot; value: struct lb_backend
 *   A slot keeps its backend across applies (connections name it); a removed
 *   backend's slot is emptied only after the new instance runs.
 */
#define LB_MAP_BACKENDS "lb_backends"
#define LB_MAX_BACKENDS 16384
/*
 * lb_svcs: BPF_MAP_TYPE_ARRAY of LB_MAX_SERVICES, pinned; written and read by
 *   moat only (what runs, for status, plan and backend changes: the kernel
 *   is the truth, not a file).
 */
#define LB_MAP_SVCS "lb_svcs"
#define LB_MAX_SERVICES 1024
/*
 * lb_ct: BPF_MAP_TYPE_LRU_HASH (BPF_F_NO_COMMON_LRU: each CPU evicts from its own
 *   list, no shared lock on a new connection), pinned; key struct lb_ct_key, value struct lb_ct_val
 * lb_rev: BPF_MAP_TYPE_LRU_HASH, pinned; key struct lb_rev_key, value struct lb_rev_val
 *   (NAT only: the backend's side of a connection, for the replies)
 */
#define LB_MAP_CT  "lb_ct"
#define LB_MAP_REV "lb_rev"
/*
 * lb_stats: BPF_MAP_TYPE_PERCPU_ARRAY of LB_STAT_MAX, pinned: struct count_value per LB_STAT_*
 * lb_bstats: BPF_MAP_TYPE_PERCPU_ARRAY of LB_MAX_BACKENDS, pinned: struct lb_bcount per
 *   backend slot (packets, bytes and new connections in one entry: one lookup per packet)
 * lb_sstats: BPF_MAP_TYPE_PERCPU_ARRAY of LB_MAX_SERVICES, pinned: per service
 */
#define LB_MAP_STATS  "lb_stats"
#define LB_MAP_BSTATS "lb_bstats"
#define LB_MAP_SSTATS "lb_sstats"
/* lb_config: BPF_MAP_TYPE_ARRAY of 1, per instance: struct lb_config */
/*
 * lb_ifaces: BPF_MAP_TYPE_ARRAY of LB_IF_SLOTS __u32, pinned: slot
 *   ifindex % LB_IF_SLOTS holds the ifindex of an interface the balancer runs
 *   on; lb_xdp passes packets of any other interface untouched (behind the
 *   firewall, which tail-calls it on every firewall interface).
 */
#define LB_MAP_IFACES "lb_ifaces"
#define LB_IF_SLOTS 1024
#define LB_MAP_CONFIG "lb_config"

#define LB_NONE 0xFFFFFFFF
/* A TCP connection that saw FIN or RST is kept this long after its last packet. */
#define LB_CLOSING_SECS 10

/* lb_vip.mode */
#define LB_MODE_NAT 0
#define LB_MODE_DSR 1
/* lb_vip.flags */
#define LB_VIP_ECHO 1
/* lb_vip.hash: which fields the flow hash takes */
#define LB_HASH_SRC   1
#define LB_HASH_SPORT 2
#define LB_HASH_DST   4
#define LB_HASH_DPORT 8
#define LB_HASH_PROTO 16

/* lb_backend.state */
#define LB_B_EMPTY 0 /* no backend in this slot */
#define LB_B_UP    1
#define LB_B_DOWN  2 /* failed health checks: no new connections, existing kept */
#define LB_B_DRAIN 3 /* operator's drain: the same, on purpose */

/* Reasons (lb_stats slots). Verdicts first; the rest are bookkeeping. */
#define LB_STAT_PASS           0 /* not for a VIP: passed untouched */
#define LB_STAT_NEW            1 /* new connection balanced */
#define LB_STAT_TRACKED        2 /* packet of a tracked connection */
#define LB_STAT_REPLY          3 /* NAT reply from a backend, source set back to the VIP */
#define LB_STAT_ECHO           4 /* ICMP echo request to a VIP answered */
#define LB_STAT_DROP_NO_BACKEND 5 /* no backend up with weight > 0 */
#define LB_STAT_DROP_MALFORMED 6 /* truncated headers on the way to a VIP */
#define LB_STAT_DROP_FRAGMENT  7 /* IP fragment to a VIP (no ports to balance by) */
#define LB_STAT_DROP_PROTO     8 /* to a VIP address, a protocol no service takes */
#define LB_STAT_DROP_NO_ROUTE  9 /* DSR: no neighbour known for the backend */
#define LB_STAT_OUT_TX         10 /* sent back out of the arrival interface */
#define LB_STAT_OUT_REDIRECT   11 /* sent out of another interface */
#define LB_STAT_OUT_KERNEL     12 /* rewritten, left to kernel forwarding */
#define LB_STAT_RESELECT       13 /* tracked connection's backend gone: picked again */
#define LB_STAT_ICMP_ERROR     14 /* ICMP error about a balanced connection, sent by its inner flow */
#define LB_STAT_MAX            15

struct lb_vip_key {
	__u8 addr[16]; /* IPv4 in the first 4 bytes, rest 0 */
	__be16 port;   /* 0: every port */
	__u8 proto;
	__u8 family;   /* 4 or 6 */
};

struct lb_vip {
	__u32 svc;       /* lb_svcs / lb_sstats slot; LB_NONE for an echo entry */
	__u32 table_off; /* first lb_maglev entry of this service */
	__u8 mode;       /* LB_MODE_* */
	__u8 hash;       /* LB_HASH_* bits */
	__u8 flags;      /* LB_VIP_* */
	__u8 pad[5];
};

struct lb_backend {
	__u8 addr[16];
	__be16 port;     /* 0: the packet's destination port (no remap) */
	__u8 family;
	__u8 state;      /* LB_B_* */
	__u32 svc;
	__u32 weight;
	__u32 flags;     /* LB_BF_* */
};

/* lb_backend.flags */
#define LB_BF_REV 1 /* NAT replies need per-connection lb_rev entries */
#define LB_BF_RESET_DOWN 2 /* health on_down: reset: a down backend loses its connections */

struct lb_back {
	__u8 vip[16];
	__be16 vport;    /* 0: the reply's source port */
	__u8 flags;      /* LB_BACK_* */
	__u8 pad;
	__u32 svc;
};

struct lb_svc {
	__u8 name[32];   /* NUL-padded */
	__u8 vip[16];
	__be16 port;
	__u8 proto;
	__u8 family;
	__u8 mode;
	__u8 hash;
	__u8 used;       /* 1 if this slot holds a service */
	__u8 pad;
};

struct lb_ct_key {
	__u8 client[16];
	__u8 vip[16];
	__be16 cport;
	__be16 vport;
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

/* lb_bstats value: what one backend slot forwarded, per CPU. */
struct lb_bcount {
	__u64 packets;
	__u64 bytes;
	__u64 conns;     /* new connections given to it */
	__u64 pad;       /* two entries per cache line */
};

struct lb_ct_val {
	__u64 last_ns;
	__u32 slot;      /* lb_backends slot */
	__u32 svc;
	__u8 backend[16];/* the backend's address and port when chosen: a slot */
	__be16 bport;    /* reused by another backend does not inherit it */
	__u8 closing;    /* FIN or RST seen */
	__u8 pad[5];
};

struct lb_rev_key {
	__u8 backend[16];
	__u8 client[16];
	__be16 bport;
	__be16 cport;
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

struct lb_rev_val {
	__u8 vip[16];
	__be16 vport;
	__u8 pad[6];
};

struct lb_config {
	__u32 table_size;
	__u32 generation;
	__u64 udp_idle_ns;
	__u64 tcp_idle_ns;
};

#endif /* MOAT_ABI_LB_H */
