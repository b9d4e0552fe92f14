/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* abi/fw.h — the stateful firewall. Included through ../abi.h; rules there. */
#ifndef MOAT_ABI_FW_H
#define MOAT_ABI_FW_H

#include <linux/types.h>

/* ---------------------------------------------------------------------------
 * fw — the stateful firewall (bpf/fw/fw.bpf.c)
 *
 * Per packet: parse (more than MOAT_MAX_VLAN_DEPTH tags: drop); non-IP and
 * the ICMPv6 messages a host needs pass; malformed drops; a later fragment
 * follows its first; an ICMP error quoting a tracked connection passes; a
 * tracked connection passes if the policy generation that admitted it is
 * current, else its first packet is re-checked; anything else is a new
 * connection: the remote address gives a class (fw_host4/6 hash, else
 * fw_addr4/6 LPM trie), {class, direction, protocol, port} gives the verdict
 * (fw_ports hash for an exact port or every port, else fw_verdict LPM trie
 * for port ranges), a miss gives the default. Rules compile to these entries
 * in moat-core::fw::compile and are encoded for these maps in
 * moat-core::fw::encode; the kernel only looks up.
 * ------------------------------------------------------------------------- */

#define FW_PROG_XDP "fw_xdp"       /* ingress, at XDP */
#define FW_PROG_TC  "fw_tc_egress" /* egress, at TC (TCX) */

/*
 * fw_addr4 / fw_addr6: BPF_MAP_TYPE_LPM_TRIE (BPF_F_NO_PREALLOC)
 *   key:    struct fw_addr4_key / fw_addr6_key (prefixlen + address, network order)
 *   value:  struct fw_class
 *   writer: moat fw apply (compiled address classes); reader: fw programs
 *   A miss means class 0: no rule selects the address.
 */
#define FW_MAP_ADDR4 "fw_addr4"
#define FW_MAP_ADDR6 "fw_addr6"
/*
 * fw_host4 / fw_host6: BPF_MAP_TYPE_HASH (BPF_F_NO_PREALLOC)
 *   key: __u8[4] / __u8[16] address; value: struct fw_class
 *   The /32 and /128 entries of the address classes: a host entry is always
 *   the longest match, so one hash probe answers before the trie is walked,
 *   and the trie keeps only the shorter prefixes (a million-address blocklist
 *   costs a hash lookup, not a deep trie walk).
 *   writer: moat fw apply; reader: fw programs
 */
#define FW_MAP_HOST4 "fw_host4"
#define FW_MAP_HOST6 "fw_host6"
/*
 * fw_ports: BPF_MAP_TYPE_HASH (BPF_F_NO_PREALLOC)
 *   key: struct fw_port_key; value: struct fw_verdict
 *   The verdict entries matching one exact port (plen 16) or every port
 *   (plen 0, port 0). The compiler's port prefixes of one {class, dir, proto}
 *   never overlap, so whichever probe hits is the answer; fw_verdict keeps
 *   only the other prefix lengths (port ranges).
 *   writer: moat fw apply; reader: fw programs
 */
#define FW_MAP_PORTS "fw_ports"
/*
 * fw_verdict: BPF_MAP_TYPE_LPM_TRIE (BPF_F_NO_PREALLOC)
 *   key:    struct fw_verdict_key; prefixlen = 48 + bits of port matched
 *   value:  struct fw_verdict
 *   writer: moat fw apply; reader: fw programs. A miss means the default.
 */
#define FW_MAP_VERDICT "fw_verdict"
/*
 * fw_dense: BPF_MAP_TYPE_ARRAY (BPF_F_MMAPABLE), FW_DENSE_SLOTS entries of
 *   __u64 (1 when the policy has no dense class): every verdict of one class
 *   (fw_config.dense_class, the class of addresses no rule names or only
 *   "any" rules name: what a flood from anywhere hits), indexed by
 *   FW_DENSE_IDX(dir, proto, port): one array read instead of hash probes.
 *   value: rule id | action << 32 | flags << 40 (action 0: the default).
 *   writer: moat fw apply (one write through mmap); reader: fw programs
 */
#define FW_MAP_DENSE "fw_dense"
#define FW_DENSE_PROTOS 5 /* tcp, udp, icmp, icmpv6, other */
#define FW_DENSE_SLOTS 655360 /* 2 directions x FW_DENSE_PROTOS x 65536 ports */
/* proto_idx: 0 tcp, 1 udp, 2 icmp, 3 icmpv6, 4 other; port in host order. */
#define FW_DENSE_IDX(dir, proto_idx, port) ((((dir) * FW_DENSE_PROTOS + (proto_idx)) << 16) | (port))
/*
 * fw_hostbits: BPF_MAP_TYPE_ARRAY (BPF_F_MMAPABLE) of __u64 words, sized by
 *   the loader (a power of two of bits, 16 per host entry): bit
 *   fw_addr_hash(addr) & fw_config.hostbits_mask is set for every fw_host4 /
 *   fw_host6 address, so an address whose bit is clear skips the hash probe
 *   (never a false "absent"). writer: moat fw apply; reader: fw programs
 */
#define FW_MAP_HOSTBITS "fw_hostbits"
/*
 * fw_config: BPF_MAP_TYPE_ARRAY, 1 entry, key __u32 0, value struct fw_config
 *   writer: moat fw apply (before the program is swapped in); reader: fw programs
 */
#define FW_MAP_CONFIG "fw_config"
/*
 * fw_ct / fw_ct_assured: BPF_MAP_TYPE_LRU_HASH, pinned by name, shared by
 *   every program generation so that connections survive a policy update;
 *   both sized by the policy's conntrack max (the loader sets max_entries).
 *   key: struct fw_ct_key (host's view: local/remote); value: struct fw_ct_val
 *   A new allowed connection goes into fw_ct. Once it has seen traffic both
 *   ways (TCP: and reached ESTABLISHED or a later state, so a SYN answered by
 *   our SYN-ACK does not count), it moves to fw_ct_assured (nf_conntrack's
 *   "assured"). Floods of one-sided new flows only insert into fw_ct, so
 *   they can evict only other unassured entries; an assured entry is evicted
 *   only by another assured one, when that table is full. Inserts, moves and
 *   deletes are counted in fw_stats (FW_STAT_CT_*), so userspace computes
 *   evictions as inserted - moved/forgotten - live.
 *   writer: fw programs (new allowed connections, re-checks, expiry);
 *   readers: moat fw status, moat flows, moat top, moat metrics
 */
#define FW_MAP_CT "fw_ct"
#define FW_MAP_CT_ASSURED "fw_ct_assured"
/*
 * fw_frag: BPF_MAP_TYPE_LRU_HASH, pinned by name: first fragments that passed,
 *   so later fragments (no transport header) follow their verdict.
 *   key: struct fw_frag_key; value: __u32 (1 = passed). writer/reader: fw programs
 */
#define FW_MAP_FRAG "fw_frag"
/*
 * fw_rule_stats: BPF_MAP_TYPE_PERCPU_ARRAY, one entry per rule id (0 = default)
 *   value: struct count_value (packets, bytes decided by that rule, including
 *   packets of the connections it admitted). writer: fw programs (moat fw apply
 *   seeds it with the running counters by rule name); readers: status, top, metrics
 */
#define FW_MAP_RULE_STATS "fw_rule_stats"
/*
 * fw_stats: BPF_MAP_TYPE_PERCPU_ARRAY, FW_STAT_MAX entries, pinned by name
 *   value: struct count_value per reason below. writer: fw programs; readers: status, top, metrics, explain
 */
#define FW_MAP_STATS "fw_stats"

/*
 * fw_ctseen: BPF_MAP_TYPE_ARRAY, FW_CTSEEN_SLOTS / 16 entries of struct
 *   fw_line (16 __u32 slots: an array map rounds each value up to 8 bytes,
 *   so one __u32 per entry would take twice the cache), pinned by name with
 *   fw_ct: a counting presence filter in front of conntrack. Slot s (entry
 *   s / 16, word s % 16), s = fw_ct_hash(key) % FW_CTSEEN_SLOTS, counts the fw_ct entries inserted with
 *   that hash (incremented before an insert, decremented after a delete that
 *   succeeded; LRU evictions leave it high). 0 means "certainly not tracked",
 *   so a flood of new flows skips the conntrack lookup; never a false "absent".
 *   BPF_F_MMAPABLE: moat's own marks are atomic adds on single slots.
 *   writer/reader: fw programs (moat clears it with fw_ct)
 */
#define FW_MAP_CTSEEN "fw_ctseen"

/*
 * fw_gen: BPF_MAP_TYPE_ARRAY, 1 entry of __u64, pinned by name: the last
 *   policy generation moat handed out. Not used by the programs: it is the
 *   kernel-side record that keeps generations strictly increasing across
 *   failed applies, crashes and a lost state file.
 *   writer/reader: moat fw apply (under the firewall lock)
 */
#define FW_MAP_GEN "fw_gen"
/*
 * fw_next: BPF_MAP_TYPE_PROG_ARRAY of 1, pinned by name
 *   slot 0: the program a passed packet goes to next on XDP (the load
 *   balancer, when both run on an interface: see moat-host::chain); empty:
 *   the packet goes to the kernel.
 *   writer: moat lb apply / moat fw apply / detach; reader: fw_xdp (tail call)
 */
#define FW_MAP_NEXT "fw_next"
#define FW_CTSEEN_SLOTS 16384 /* 64 KiB: a flood's random probes stay in cache */

/*
 * fw_flows: BPF_MAP_TYPE_ARRAY, FW_FLOW_SLOTS, pinned by name: denied flows
 *   (allowed ones are the conntrack entries), direct-mapped: a flow lives in
 *   slot fw_ct_hash(key) % FW_FLOW_SLOTS, so recording a drop is one array
 *   access under any flood. A new denied flow takes its slot only while the
 *   flow token bucket allows (fw_config.flow_cost_ns; the others are counted
 *   in fw_evstats[FW_EV_FLOWS_SKIPPED]); a flow it pushes out of the slot is
 *   counted in fw_evstats[FW_EV_FLOWS_REPLACED]. An empty slot has
 *   first_seen_ns 0.
 *   key: __u32 slot; value: struct fw_flow_slot (BPF_F_MMAPABLE)
 *   writer: fw programs; reader: moat flows / top / metrics
 */
#define FW_MAP_FLOWS "fw_flows"
#define FW_FLOW_SLOTS 8192
/* Sixteen __u32 slots of fw_ctseen or fw_flowtags: one cache line. */
#define FW_LINE_SLOTS 16
struct fw_line {
	__u32 slot[FW_LINE_SLOTS];
};
/*
 * fw_flowtags: BPF_MAP_TYPE_ARRAY, FW_FLOW_SLOTS / 16 entries of struct
 *   fw_line, pinned by name with fw_flows: slot i (entry i / 16, word i % 16)
 *   holds fw_ct_hash of the flow last written to
 *   fw_flows slot i. A hint read before the slot (32 KiB instead of the
 *   slots' 800): a packet whose hash differs is certainly not the slot's flow,
 *   so a flood of new flows touches only the tags. A tag that matches is
 *   checked against the slot's key. writer/reader: fw programs
 */
#define FW_MAP_FLOWTAGS "fw_flowtags"
/*
 * fw_events: BPF_MAP_TYPE_RINGBUF, pinned by name: struct fw_event records
 *   (drops, and verdicts of rules with log: true), sampled and rate limited
 *   in the kernel. writer: fw programs; reader: moat flows --follow, capture
 */
#define FW_MAP_EVENTS "fw_events"
/*
 * fw_evstate: BPF_MAP_TYPE_PERCPU_ARRAY, 1 entry, struct fw_evstate: the
 *   per-CPU token buckets, sampling counter and clock (the coarse clock read
 *   once per tick: common/clock.h). writer/reader: fw programs
 */
#define FW_MAP_EVSTATE "fw_evstate"
/*
 * fw_evstats: BPF_MAP_TYPE_PERCPU_ARRAY, FW_EV_MAX entries of __u64, pinned:
 *   what happened to packets that qualified for an event (seen = emitted +
 *   sampled_out + rate_limited + lost). writer: fw programs; reader: moat
 */
#define FW_MAP_EVSTATS "fw_evstats"

/*
 * fw_ifstats: BPF_MAP_TYPE_PERCPU_ARRAY, FW_IF_SLOTS * 4 entries, pinned by
 *   name: packets and bytes per interface, direction and verdict, at index
 *   (ifindex % FW_IF_SLOTS) << 2 | dir << 1 | dropped (interfaces share a
 *   slot only if their ifindexes are equal modulo FW_IF_SLOTS).
 *   value: struct count_value. writer: fw programs; reader: moat metrics/top
 */
#define FW_MAP_IFSTATS "fw_ifstats"
#define FW_IF_SLOTS 256

#define FW_PIN_DIR "/sys/fs/bpf/moat/fw"

/* Index into fw_evstats. */
#define FW_EV_SEEN          0 /* packets that qualified for an event: not counted by the
                                * programs (a counter less per drop); readers sum the four below */
#define FW_EV_EMITTED       1 /* written to the ring buffer */
#define FW_EV_SAMPLED_OUT   2 /* skipped by 1-in-N sampling */
#define FW_EV_RATE_LIMITED  3 /* skipped: event token bucket empty */
#define FW_EV_LOST          4 /* ring buffer full */
#define FW_EV_FLOWS_SKIPPED 5 /* (not an event) new denied flow not recorded: flow bucket empty */
#define FW_EV_FLOWS_REPLACED 6 /* (not an event) a denied flow record pushed out of its slot */
#define FW_EV_MAX           7

/* fw_event.kind */
#define FW_EVENT_DROP 1 /* a dropped packet */
#define FW_EVENT_LOG  2 /* first packet of a connection allowed by a rule with log: true */

/* Bytes of the frame (from the Ethernet header) an event carries. */
#define FW_EVENT_CAP 128

/* fw_verdict.flags, fw_ct_val.flags */
#define FW_FLAG_LOG 1 /* the deciding rule has log: true */

/* Reasons a packet passed or was dropped (index into fw_stats). */
#define FW_STAT_PASS_ESTABLISHED 0 /* tracked connection, current generation */
#define FW_STAT_PASS_RULE        1 /* new connection allowed by a rule */
#define FW_STAT_PASS_DEFAULT     2 /* new connection allowed by the default */
#define FW_STAT_PASS_RECHECKED   3 /* tracked connection re-checked after an update */
#define FW_STAT_PASS_RELATED     4 /* ICMP error quoting a tracked connection */
#define FW_STAT_PASS_FRAGMENT    5 /* later fragment of a first fragment that passed */
#define FW_STAT_PASS_NDP         6 /* ICMPv6 neighbour discovery / MLD (RFC 4890) */
#define FW_STAT_PASS_NON_IP      7 /* ARP and every non-IP ethertype */
#define FW_STAT_DROP_RULE        8 /* new connection denied by a rule */
#define FW_STAT_DROP_DEFAULT     9 /* new connection denied by the default */
#define FW_STAT_DROP_REVOKED    10 /* tracked connection the new policy denies */
#define FW_STAT_DROP_MALFORMED  11 /* IP header or transport header cut/invalid */
#define FW_STAT_DROP_FRAGMENT   12 /* later fragment whose first did not pass */
#define FW_STAT_CT_EXPIRED      13 /* (not a verdict) tracked connection idle past its timeout */
#define FW_STAT_DROP_VLAN_DEPTH 14 /* more VLAN tags than MOAT_MAX_VLAN_DEPTH (Linux would deliver it) */
/* Not verdicts: conntrack bookkeeping (packets = times; bytes unused). */
#define FW_STAT_CT_NEW          15 /* inserted into fw_ct */
#define FW_STAT_CT_ASSURED      16 /* inserted into fw_ct_assured (moved there) */
#define FW_STAT_CT_MOVED        17 /* deleted from fw_ct after its move */
#define FW_STAT_CT_FORGOT_NEW   18 /* deleted from fw_ct (expired, closed, revoked) */
#define FW_STAT_CT_FORGOT_ASSURED 19 /* deleted from fw_ct_assured (the same) */
#define FW_STAT_MAX             20

#define FW_DIR_INGRESS 0
#define FW_DIR_EGRESS  1

#define FW_ACTION_ALLOW 1
#define FW_ACTION_DENY  2

/* Protocol byte of fw_verdict_key: 6, 17, 1, 58, or FW_PROTO_OTHER for any other. */
#define FW_PROTO_OTHER 255

/* fw_config.maps bits: a policy map is probed only if it holds entries. */
#define FW_HAS_ADDR4      1
#define FW_HAS_ADDR6      2
#define FW_HAS_HOST4      4
#define FW_HAS_HOST6      8
#define FW_HAS_PORT_EXACT 16
#define FW_HAS_PORT_ANY   32
#define FW_HAS_VERDICT    64
#define FW_HAS_BLOCK      128 /* some class has block_rule set: look the remote up before conntrack */
/* fw_config.maps2 bits. */
#define FW_HAS2_DENSE     1 /* fw_dense holds dense_class's verdicts */
#define FW_HAS2_HOSTBITS  2 /* fw_hostbits filters fw_host4/6 probes */

/* Rule id 0 is the direction's default. */
#define FW_RULE_DEFAULT 0

struct fw_addr4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct fw_addr6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/*
 * block_rule[] != 0 (indexed by FW_DIR_*): the policy denies every packet to
 * and from these addresses, in both directions, whatever the protocol and
 * port, by one rule per direction (a blocklist): no connection with them can
 * be admitted, so their packets drop before any conntrack work (a connection
 * tracked before the block came is not looked up: its packets drop as
 * drop_rule and its entry ages out).
 */
struct fw_class {
	__u32 class_id;
	__u32 block_rule[2];  /* deciding rule id per direction; 0: not a block */
	__u8 block_flags[2];  /* FW_FLAG_* of those rules */
	__u8 pad[2];
};

/*
 * port: tcp/udp destination port of the connection's first packet (its local
 * port on ingress, remote port on egress); icmp/icmpv6: type << 8 | code;
 * other protocols: 0. Network byte order, so a port range is a prefix.
 */
struct fw_verdict_key {
	__u32 prefixlen;
	__be32 class_id;
	__u8 dir;
	__u8 proto;
	__be16 port;
};

struct fw_port_key {
	__be32 class_id;
	__u8 dir;
	__u8 proto;
	__u8 plen;    /* 16: exact port; 0: every port (port 0) */
	__u8 pad;
	__be16 port;
	__u8 pad2[2];
};

struct fw_verdict {
	__u32 rule;   /* deciding rule id (1-based; FW_RULE_DEFAULT never stored) */
	__u8 action;  /* FW_ACTION_* */
	__u8 flags;   /* FW_FLAG_* */
	__u8 pad[2];
};

/*
 * TCP connection states (fw_ct_val.tcp_state), in the spirit of nf_conntrack;
 * "orig" is the side that sent the first packet (fw_ct_val.dir0).
 *   new, SYN without ACK          -> SYN_SENT    (other first packets: ESTABLISHED,
 *                                                 the loose pick-up of open connections)
 *   SYN_SENT, SYN+ACK from reply  -> SYN_RECV
 *   SYN_RECV, ACK from orig       -> ESTABLISHED
 *   ESTABLISHED/SYN_*, FIN        -> FIN_WAIT (orig's) / CLOSE_WAIT (reply's)
 *   FIN_WAIT, FIN from reply; CLOSE_WAIT, FIN from orig -> LAST_ACK
 *   LAST_ACK, ACK                 -> TIME_WAIT
 *   any state, RST                -> CLOSE
 *   TIME_WAIT or CLOSE, SYN       -> the entry is forgotten and the SYN judged
 *                                    as a new connection (a closed tuple admits nothing)
 *   CLOSE, anything but RST       -> the same
 * Sequence numbers and windows are not checked.
 */
#define FW_TCP_NONE        0
#define FW_TCP_SYN_SENT    1
#define FW_TCP_SYN_RECV    2
#define FW_TCP_ESTABLISHED 3
#define FW_TCP_FIN_WAIT    4
#define FW_TCP_CLOSE_WAIT  5
#define FW_TCP_LAST_ACK    6
#define FW_TCP_TIME_WAIT   7
#define FW_TCP_CLOSE       8
#define FW_TCP_STATES      9
#define FW_TCP_TIMEOUT_SLOTS 16

struct fw_config {
	__u32 generation;       /* policy generation of this program instance */
	__u8 default_ingress;   /* FW_ACTION_* */
	__u8 default_egress;    /* FW_ACTION_* */
	__u8 maps;              /* FW_HAS_*: which policy maps hold entries (skip empty ones) */
	__u8 pad;
	/* Idle seconds after which a tracked connection is forgotten (its next
	 * packet is judged as a first packet again). */
	__u32 timeout_tcp;
	__u32 timeout_udp;
	__u32 timeout_other;
	/* One event per ev_sample qualifying packets (0 or 1: all). */
	__u32 ev_sample;
	/* Events, per CPU token bucket: one event costs ev_cost_ns of credit,
	 * credit is capped at ev_cap_ns (the burst); ev_cost_ns 0: no events. */
	__u64 ev_cost_ns;
	__u64 ev_cap_ns;
	/* New denied flows recorded in fw_flows: the same kind of bucket. */
	__u64 flow_cost_ns;
	__u64 flow_cap_ns;
	__u8 log_drops;         /* 1: every drop qualifies for an event */
	__u8 pad2[7];
	/* Idle seconds per TCP state (FW_TCP_*; [FW_TCP_NONE] and the slots past
	 * FW_TCP_STATES = timeout_tcp), like nf_conntrack's
	 * nf_conntrack_tcp_timeout_* (timeout_tcp is ESTABLISHED's). A power of two
	 * of slots, so that state & (slots - 1) is always a valid index. */
	__u32 tcp_timeouts[FW_TCP_TIMEOUT_SLOTS];
	/* The class of an address no trie prefix but /0 covers: 0.0.0.0/0 and
	 * ::/0 are kept here, not in the tries (a trie miss means this class). */
	struct fw_class any4;
	struct fw_class any6;
	__u32 dense_class;      /* see fw_dense (FW_HAS2_DENSE) */
	__u32 hostbits_mask;    /* bits of fw_hostbits - 1 (FW_HAS2_HOSTBITS) */
	__u8 maps2;             /* FW_HAS2_* */
	__u8 pad3[7];           /* 176 bytes, no hidden padding */
};

/* One connection, as the host sees it (same key in both directions). */
struct fw_ct_key {
	__u8 local[16];    /* IPv4: first 4 bytes, rest zero */
	__u8 remote[16];
	__be16 lport;      /* tcp/udp: ports; icmp echo: identifier in lport, */
	__be16 rport;      /* and rport 0 if this host sent the request, 1 if the peer did */
	__u8 proto;        /* IPPROTO_* */
	__u8 family;       /* 4 or 6 */
	__u8 pad[2];
};

struct fw_ct_val {
	__u64 first_seen_ns;  /* CLOCK_MONOTONIC_COARSE (jiffy resolution) */
	__u64 last_seen_ns;
	__u64 packets;
	__u64 bytes;
	__u32 generation;  /* generation whose policy admitted / last re-checked it */
	__u32 rule;        /* deciding rule id in that generation */
	__be16 port0;      /* policy port of the first packet (see fw_verdict_key) */
	__u8 dir0;         /* FW_DIR_* of the first packet */
	__u8 flags;        /* FW_FLAG_* of the deciding rule */
	__u32 ifindex;     /* interface of the first packet */
	__u8 tcp_state;    /* FW_TCP_* (FW_TCP_NONE for other protocols) */
	__u8 replied;      /* 1 once a packet went the other way (not dir0) */
	__u8 pad[6];
};

/* A denied flow (same key as fw_ct). */
struct fw_flow_val {
	__u64 first_seen_ns;  /* CLOCK_MONOTONIC_COARSE */
	__u64 last_seen_ns;
	__u64 packets;
	__u64 bytes;
	__u32 rule;        /* deciding rule id of the last drop */
	__u32 ifindex;
	__u8 reason;       /* FW_STAT_* of the last drop */
	__u8 dir;          /* FW_DIR_* */
	__u8 pad[6];
};

/* One slot of fw_flows. */
struct fw_flow_slot {
	struct fw_ct_key key;
	struct fw_flow_val val;
};

struct fw_bucket {
	__u64 last_ns;     /* bpf_ktime_get_coarse_ns of the last refill */
	__u64 credit_ns;   /* saved credit (see fw_config.ev_cost_ns) */
};

struct fw_evstate {
	struct fw_bucket ev;
	struct fw_bucket flow;
	__u64 seq;         /* qualifying packets seen (for 1-in-N sampling) */
	__u64 clock_jiffies; /* the per-CPU clock (common/clock.h): jiffies of */
	__u64 clock_ns;      /* the last coarse clock read, and what it read */
	__u32 handoff[4];    /* this packet's parse results (fw.bpf.c fw_handoff) */
};

/* One ring buffer record. */
struct fw_event {
	__u64 ts_ns;       /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u32 ifindex;
	__u32 rule;        /* deciding rule id (0: default or no rule) */
	__u32 pkt_len;     /* frame length on the wire (from Ethernet) */
	__u16 cap_len;     /* bytes of the frame in data */
	__u8 kind;         /* FW_EVENT_* */
	__u8 reason;       /* FW_STAT_* */
	__u8 dir;          /* FW_DIR_* */
	__u8 pad[7];
	__u8 data[FW_EVENT_CAP];
};
/* Ring-buffer records have no map value type, so their BTF is not emitted:
 * the layout is pinned here instead (moat-ebpf's objects test compares these
 * lines with the Rust mirror). */
#define MOAT_OFFSET_OF(t, f) __builtin_offsetof(struct t, f)
_Static_assert(MOAT_OFFSET_OF(fw_event, ts_ns) == 0, "fw_event.ts_ns");
_Static_assert(MOAT_OFFSET_OF(fw_event, ifindex) == 8, "fw_event.ifindex");
_Static_assert(MOAT_OFFSET_OF(fw_event, rule) == 12, "fw_event.rule");
_Static_assert(MOAT_OFFSET_OF(fw_event, pkt_len) == 16, "fw_event.pkt_len");
_Static_assert(MOAT_OFFSET_OF(fw_event, cap_len) == 20, "fw_event.cap_len");
_Static_assert(MOAT_OFFSET_OF(fw_event, kind) == 22, "fw_event.kind");
_Static_assert(MOAT_OFFSET_OF(fw_event, reason) == 23, "fw_event.reason");
_Static_assert(MOAT_OFFSET_OF(fw_event, dir) == 24, "fw_event.dir");
_Static_assert(MOAT_OFFSET_OF(fw_event, pad) == 25, "fw_event.pad");
_Static_assert(MOAT_OFFSET_OF(fw_event, data) == 32, "fw_event.data");
_Static_assert(sizeof(struct fw_event) == 32 + FW_EVENT_CAP, "fw_event size");

struct fw_frag_key {
	__u8 src[16];
	__u8 dst[16];
	__u32 id;
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

#endif /* MOAT_ABI_FW_H */
