/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * fw.bpf.c — moat's stateful L3/L4 firewall: fw_xdp (ingress, XDP) and
 * fw_tc_egress (egress, TC/TCX). The policy arrives compiled (moat-core::fw
 * compile + encode): an address class (host hash, else LPM trie) and a verdict
 * (exact-port hash, every-port hash, else port-range LPM trie) decide a new
 * connection in a bounded number of lookups whatever the number of rules; a
 * conntrack LRU shared across policy generations lets established traffic and
 * replies through and re-checks connections when the policy changes.
 * Maps and structs: see bpf/common/abi.h.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "../common/abi.h"
#include "../common/bucket.h"
#include "../common/clock.h"
#include "../common/parse.h"
#include "../common/stats.h"

#define PIN_BY_NAME 1 /* LIBBPF_PIN_BY_NAME */

/* Sizes of the policy maps are set by the loader from the compiled policy. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fw_addr4_key);
	__type(value, struct fw_class);
} fw_addr4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fw_addr6_key);
	__type(value, struct fw_class);
} fw_addr6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fw_verdict_key);
	__type(value, struct fw_verdict);
} fw_verdict SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u8[4]);
	__type(value, struct fw_class);
} fw_host4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u8[16]);
	__type(value, struct fw_class);
} fw_host6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fw_port_key);
	__type(value, struct fw_verdict);
} fw_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fw_config);
} fw_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} fw_dense SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} fw_hostbits SEC(".maps");

/* Sized by the loader from the policy's conntrack max (see abi/fw.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__uint(pinning, PIN_BY_NAME);
	__type(key, struct fw_ct_key);
	__type(value, struct fw_ct_val);
} fw_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__uint(pinning, PIN_BY_NAME);
	__type(key, struct fw_ct_key);
	__type(value, struct fw_ct_val);
} fw_ct_assured SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_CTSEEN_SLOTS / FW_LINE_SLOTS);
	__uint(map_flags, BPF_F_MMAPABLE); /* moat changes one slot at a time */
	__uint(pinning, PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct fw_line);
} fw_ctseen SEC(".maps");

/* Not used here: userspace's record of the last generation (see abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(pinning, PIN_BY_NAME);
	__type(key, __u32);
	__type(value, __u64);
} fw_gen SEC(".maps");

/* What a passed packet runs next (the load balancer on the same interface). */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__uint(pinning, PIN_BY_NAME);
	__type(key, __u32);
	__type(value, __u32);
} fw_next SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__uint(pinning, PIN_BY_NAME);
	__type(key, struct fw_frag_key);
	__type(value, __u32);
} fw_frag SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct count_value);
} fw_rule_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_STAT_MAX);
	__uint(pinning, PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct count_value);
} fw_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_FLOW_SLOTS);
	__uint(map_flags, BPF_F_MMAPABLE); /* so moat can clear it in one write */
	__uint(pinning, PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct fw_flow_slot);
} fw_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_FLOW_SLOTS / FW_LINE_SLOTS);
	__uint(pinning, PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct fw_line);
} fw_flowtags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, PIN_BY_NAME);
} fw_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fw_evstate);
} fw_evstate SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_EV_MAX);
	__uint(pinning, PIN_BY_NAME);
	__type(key, __u32);
	__type(value, __u64);
} fw_evstats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_IF_SLOTS * 4);
	__uint(pinning, PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct count_value);
} fw_ifstats SEC(".maps");

#define FW_PASS 0
#define FW_DROP 1

/* Largest header offset the parser may hand us (bounds for the verifier). */
#define FW_MAX_OFF 4000


/* The verdict of each reason, spelled out (not inferred from the order). */
static __always_inline int fw_reason_verdict(__u32 reason)
{
	switch (reason) {
	case FW_STAT_DROP_RULE:
	case FW_STAT_DROP_DEFAULT:
	case FW_STAT_DROP_REVOKED:
	case FW_STAT_DROP_MALFORMED:
	case FW_STAT_DROP_FRAGMENT:
	case FW_STAT_DROP_VLAN_DEPTH:
		return FW_DROP;
	}
	return FW_PASS;
}

static __always_inline int fw_stat(__u32 reason, __u64 len)
{
	moat_count_add(&fw_stats, reason, len);
	return fw_reason_verdict(reason);
}

/* The connection hash (masked: its fw_ctseen and fw_flows slots): the key's
 * five 64-bit words multiplied by odd constants independently (the CPU runs
 * the products side by side; FNV's chain of ten was ~3x slower), folded, and
 * mixed once more. Mirrored by moat-host's ct_hash; changing it changes every
 * slot, so it changes together with FW_CTSEEN_SLOTS (a resized filter is
 * seeded afresh from conntrack by the apply). */
static __always_inline __u32 fw_ct_hash(const struct fw_ct_key *k)
{
	const __u64 *w = (const __u64 *)k;
	/* (each word was written by one 8-byte store: fw_step_l3, fw_key_tail) */
	__u64 w4 = w[4];
	__u64 h = (w[0] * 0x9E3779B97F4A7C15ULL) ^ (w[1] * 0xC2B2AE3D27D4EB4FULL) ^
		  (w[2] * 0x165667B19E3779F9ULL) ^ (w[3] * 0xD6E8FEB86659FD93ULL) ^
		  (w4 * 0xFF51AFD7ED558CCDULL);

	h ^= h >> 32;
	h *= 0x9E3779B97F4A7C15ULL;
	return (__u32)(h >> 32);
}

/* Slot `slot` of a map of struct fw_line (fw_ctseen, fw_flowtags). */
static __always_inline __u32 *fw_line_slot(void *map, __u32 slot)
{
	__u32 line = slot / FW_LINE_SLOTS;
	struct fw_line *l = bpf_map_lookup_elem(map, &line);

	return l ? &l->slot[slot & (FW_LINE_SLOTS - 1)] : NULL;
}

/* Row of fw_dense: 0 tcp, 1 udp, 2 icmp, 3 icmpv6, 4 any other. */
static __always_inline __u32 fw_proto_idx(__u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP:
		return 0;
	case IPPROTO_UDP:
		return 1;
	case IPPROTO_ICMP:
		return 2;
	case IPPROTO_ICMPV6:
		return 3;
	}
	return 4;
}

static __always_inline __u8 fw_proto_key(__u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return proto;
	}
	return FW_PROTO_OTHER;
}

/* FNV-1a over an address's 32-bit words: its fw_hostbits bit (masked). */
static __always_inline __u32 fw_addr_hash(const __u8 *a, int words)
{
	const __u32 *w = (const __u32 *)a;
	__u32 h = 0x811c9dc5;

#pragma unroll
	for (int i = 0; i < 4; i++)
		if (i < words)
			h = (h ^ w[i]) * 0x01000193;
	return h ^ (h >> 16);
}

/* Might fw_host4/6 hold this address? (0: certainly not.) */
static __always_inline int fw_host_maybe(const struct fw_config *cfg, const __u8 *a, int words)
{
	__u32 bit, word;
	__u64 *w;

	if (!(cfg->maps2 & FW_HAS2_HOSTBITS))
		return 1;
	bit = fw_addr_hash(a, words) & cfg->hostbits_mask;
	word = bit >> 6;
	w = bpf_map_lookup_elem(&fw_hostbits, &word);
	return !w || ((*w >> (bit & 63)) & 1);
}

/*
 * The remote address's class (*out; all zero: class 0, no rule selects it):
 * exact host entry first (always the longest match), then the prefix trie.
 * Maps the policy left empty are not probed; host_maybe: fw_host_maybe of the
 * remote (read early by fw_judge). Inlined (it was a global
 * function: its call and return cost a flooded packet ~3% of the drop path
 * here, where every return goes through the SRSO safe-return thunk).
 */
static __always_inline int fw_class_of(const struct fw_config *cfg, const struct fw_ct_key *k,
				       int host_maybe, struct fw_class *out)
{
	struct fw_class *cls = NULL;

	if (!cfg || !k || !out)
		return 0;
	if (k->family == 4) {
		struct fw_addr4_key a = { .prefixlen = 32 };
		__builtin_memcpy(a.addr, k->remote, 4);
		if ((cfg->maps & FW_HAS_HOST4) && host_maybe)
			cls = bpf_map_lookup_elem(&fw_host4, a.addr);
		if (!cls && (cfg->maps & FW_HAS_ADDR4))
			cls = bpf_map_lookup_elem(&fw_addr4, &a);
	} else {
		struct fw_addr6_key a = { .prefixlen = 128 };
		__builtin_memcpy(a.addr, k->remote, 16);
		if ((cfg->maps & FW_HAS_HOST6) && host_maybe)
			cls = bpf_map_lookup_elem(&fw_host6, a.addr);
		if (!cls && (cfg->maps & FW_HAS_ADDR6))
			cls = bpf_map_lookup_elem(&fw_addr6, &a);
	}
	if (cls)
		*out = *cls;
	else
		*out = k->family == 4 ? cfg->any4 : cfg->any6;
	return 0;
}

/*
 * The compiled policy's verdict for a connection's first packet of protocol
 * proto from a remote of class *cls outside the dense class (fw_verdict_of
 * answers that one); dir_port = dir << 16 | the policy port (network order).
 * Returns FW_ACTION_* | the rule's FW_FLAG_* << 8 (five arguments at most).
 * Global, so the verifier checks it once however often it is called.
 */
__noinline int fw_policy(const struct fw_config *cfg, const struct fw_class *cls, __u32 proto,
			 __u32 dir_port, __u32 *rule)
{
	struct fw_verdict_key vk = {};
	struct fw_port_key pk = {};
	struct fw_verdict *v;
	__u32 dir = dir_port >> 16;
	__u32 port_be = dir_port & 0xFFFF;

	if (!cfg || !cls || !rule)
		return FW_ACTION_DENY;
	/* Verdict: exact port, then every port, then port ranges (the three
	 * hold disjoint port sets, so the first hit is the answer). */
	v = NULL;
	pk.class_id = bpf_htonl(cls->class_id);
	pk.dir = dir;
	pk.proto = fw_proto_key(proto);
	if (cfg->maps & FW_HAS_PORT_EXACT) {
		pk.plen = 16;
		pk.port = port_be;
		v = bpf_map_lookup_elem(&fw_ports, &pk);
	}
	if (!v && (cfg->maps & FW_HAS_PORT_ANY)) {
		pk.plen = 0;
		pk.port = 0;
		v = bpf_map_lookup_elem(&fw_ports, &pk);
	}
	if (!v && (cfg->maps & FW_HAS_VERDICT)) {
		vk.prefixlen = 64;
		vk.class_id = pk.class_id;
		vk.dir = dir;
		vk.proto = pk.proto;
		vk.port = port_be;
		v = bpf_map_lookup_elem(&fw_verdict, &vk);
	}
	if (v) {
		*rule = v->rule;
		return v->action | (__u32)v->flags << 8;
	}
	*rule = FW_RULE_DEFAULT;
	return dir == FW_DIR_INGRESS ? cfg->default_ingress : cfg->default_egress;
}

/* The verdict (as fw_policy's) of a first packet: the dense class (the
 * unlisted remotes, where floods come from) in one array read right here,
 * every other class through fw_policy. */
static __always_inline int fw_verdict_of(const struct fw_config *cfg, const struct fw_class *cls,
					 __u32 proto, __u32 dir_port, __u32 *rule)
{
	__u32 dir = dir_port >> 16;

	if ((cfg->maps2 & FW_HAS2_DENSE) && cls->class_id == cfg->dense_class) {
		/* Every verdict of this class in one array: one read. */
		__u32 idx = FW_DENSE_IDX(dir & 1, fw_proto_idx(proto), bpf_ntohs(dir_port & 0xFFFF));
		__u64 *d = bpf_map_lookup_elem(&fw_dense, &idx);

		if (d && ((*d >> 32) & 0xFF)) {
			*rule = (__u32)*d;
			return ((*d >> 32) & 0xFF) | ((*d >> 40) & 0xFF) << 8;
		}
		*rule = FW_RULE_DEFAULT;
		return dir == FW_DIR_INGRESS ? cfg->default_ingress : cfg->default_egress;
	}
	return fw_policy(cfg, cls, proto, dir_port, rule);
}

static __always_inline int icmp_is_error(__u8 proto, __u8 type)
{
	if (proto == IPPROTO_ICMP)
		return type == 3 || type == 11 || type == 12;
	return type >= 1 && type <= 4; /* ICMPv6 errors */
}

static __always_inline int icmp_is_echo(__u8 proto, __u8 type)
{
	if (proto == IPPROTO_ICMP)
		return type == 8 || type == 0;
	return type == 128 || type == 129;
}

/* RFC 4890: neighbour discovery and MLD messages a host must not lose. */
static __always_inline int icmp6_is_ndp(__u8 type)
{
	switch (type) {
	case 130: case 131: case 132: /* MLD query/report/done */
	case 133: case 134:           /* router solicitation/advertisement */
	case 135: case 136:           /* neighbour solicitation/advertisement */
	case 137:                     /* redirect */
	case 143:                     /* MLDv2 report */
	case 148: case 149:           /* SEND certification path */
		return 1;
	}
	return 0;
}

/*
 * The key's ports for a transport header at l4 (bounds checked by the
 * caller for 8 bytes), as the key's bytes hold them: lport | rport << 16 on
 * this little-endian target. local_is_src: the packet was sent by this host.
 */
static __always_inline __u32 fw_ct_ports(__u8 proto, const __u8 *l4, int local_is_src,
					 __be16 *dport)
{
	__be16 sport, lport = 0, rport = 0;

	*dport = 0;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		sport = *(__be16 *)l4;
		*dport = *(__be16 *)(l4 + 2);
		lport = local_is_src ? sport : *dport;
		rport = local_is_src ? *dport : sport;
	} else if ((proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) &&
		   icmp_is_echo(proto, l4[0])) {
		/* One exchange: the echo identifier, and which side asked (so a
		 * peer's request never rides on our own request's entry). */
		int is_request = l4[0] == 8 || l4[0] == 128;
		lport = *(__be16 *)(l4 + 4);
		rport = is_request == local_is_src ? 0 : bpf_htons(1);
	}
	return (__u32)lport | (__u32)rport << 16;
}

/* The key's last 8 bytes (ports, proto, family, zero pad) in one store: the
 * hash reads them as one word, and a load spanning narrower stores waits for
 * them to retire instead of being forwarded (perf showed it). */
static __always_inline void fw_key_tail(struct fw_ct_key *k, __u32 ports, __u8 proto,
					__u8 family)
{
	*(__u64 *)&k->lport = (__u64)ports | (__u64)proto << 32 | (__u64)family << 40;
}

/*
 * An ICMP error quoting a packet of a tracked connection: returns 1 if that
 * connection exists. inner points at the quoted IP header.
 */
static __always_inline int fw_related(void *data, void *data_end, __u32 inner_off,
				      __u32 family, __u32 dir)
{
	struct fw_ct_key k = {};
	__u8 *ip = data + inner_off;
	__u32 l4_off;
	__be16 dport;
	/* The quoted packet went the other way: on ingress it was sent by us. */
	int local_is_src = dir == FW_DIR_INGRESS;

	if (inner_off > FW_MAX_OFF)
		return 0;
	if (family == 4) {
		__u32 ihl;

		if ((void *)(ip + 20) > data_end || (ip[0] >> 4) != 4)
			return 0;
		ihl = (ip[0] & 0xF) * 4;
		if (ihl < 20)
			return 0;
		k.proto = ip[9];
		__builtin_memcpy(local_is_src ? k.local : k.remote, ip + 12, 4);
		__builtin_memcpy(local_is_src ? k.remote : k.local, ip + 16, 4);
		l4_off = inner_off + ihl;
	} else {
		if ((void *)(ip + 40) > data_end || (ip[0] >> 4) != 6)
			return 0;
		k.proto = ip[6];
		__builtin_memcpy(local_is_src ? k.local : k.remote, ip + 8, 16);
		__builtin_memcpy(local_is_src ? k.remote : k.local, ip + 24, 16);
		l4_off = inner_off + 40;
	}
	k.family = family;
	if (l4_off > FW_MAX_OFF)
		return 0;
	if (data + l4_off + 8 > data_end)
		return 0;
	fw_key_tail(&k, fw_ct_ports(k.proto, data + l4_off, local_is_src, &dport), k.proto,
		    family);
	return bpf_map_lookup_elem(&fw_ct_assured, &k) != NULL ||
	       bpf_map_lookup_elem(&fw_ct, &k) != NULL;
}

__noinline int fw_related_xdp(struct xdp_md *ctx, __u32 inner_off, __u32 family)
{
	return fw_related((void *)(long)ctx->data, (void *)(long)ctx->data_end, inner_off,
			  family, FW_DIR_INGRESS);
}

__noinline int fw_related_tc(struct __sk_buff *skb, __u32 inner_off, __u32 family)
{
	return fw_related((void *)(long)skb->data, (void *)(long)skb->data_end, inner_off,
			  family, FW_DIR_EGRESS);
}

/*
 * Parse results handed from the entry programs to the core, packed in words:
 * offs = l3_off | l4_off << 16;
 * meta = eth_proto | l4_proto << 16 | l3_ok << 24 | frag_later << 25 | frag_more << 26
 *        | vlan_deep << 27.
 */
#define META_L3_OK      (1u << 24)
#define META_FRAG_LATER (1u << 25)
#define META_FRAG_MORE  (1u << 26)
#define META_VLAN_DEEP  (1u << 27)

static __always_inline void fw_pack(const struct moat_l3 *r, __u32 *offs, __u32 *meta)
{
	*offs = (r->l3_off & 0xFFFF) | (r->l4_off << 16);
	*meta = r->eth_proto | ((__u32)r->l4_proto << 16) | (r->l3_ok ? META_L3_OK : 0) |
		(r->frag_later ? META_FRAG_LATER : 0) | (r->frag_more ? META_FRAG_MORE : 0) |
		(r->vlan_deep ? META_VLAN_DEEP : 0);
}

/*
 * The frames nearly all traffic is made of, parsed in a few instructions:
 * untagged IPv4 without options or fragment bits, untagged IPv6 whose next
 * header is the transport (TCP, UDP, ICMPv6). Writes the packed results
 * (fw_pack's words) to h and returns 1; any other frame returns 0 and goes
 * through moat_parse, whose results for these frames are the same words
 * (the fixture table in crates/moat/tests/privileged_fw_fixtures.rs has rows
 * on both sides of this line). perf: the generic parse and its packing were
 * a fifth of a flooded packet's instructions.
 */
static __always_inline int fw_parse_fast(void *data, void *data_end, __u32 *h)
{
	__u8 *p = data;
	__u16 eth;

	if ((void *)(p + 34) > data_end)
		return 0;
	eth = *(__u16 *)(p + 12);
	if (eth == bpf_htons(ETH_P_IP)) {
		if (p[14] != 0x45 || (*(__u16 *)(p + 20) & bpf_htons(0x3FFF)))
			return 0;
		h[0] = 14 | 34u << 16;
		h[1] = ETH_P_IP | (__u32)p[23] << 16 | META_L3_OK;
		h[2] = bpf_ntohs(*(__u16 *)(p + 18));
		return 1;
	}
	if (eth == bpf_htons(ETH_P_IPV6)) {
		__u8 nh;

		if ((void *)(p + 54) > data_end || (p[14] >> 4) != 6)
			return 0;
		nh = p[20];
		if (nh != IPPROTO_TCP && nh != IPPROTO_UDP && nh != IPPROTO_ICMPV6)
			return 0;
		h[0] = 14 | 54u << 16;
		h[1] = ETH_P_IPV6 | (__u32)nh << 16 | META_L3_OK;
		h[2] = 0;
		return 1;
	}
	return 0;
}

/* Parses [data, data_end) into this CPU's fw_evstate handoff words, then
 * reads them back (volatile: clang would forward the stores): to the
 * verifier they are then unknown values, whatever path the parser took (see
 * fw_decide). */
static __always_inline void fw_handoff(struct fw_evstate *st, void *data, void *data_end,
				       __u32 *offs, __u32 *meta, __u32 *frag_id)
{
	if (!fw_parse_fast(data, data_end, st->handoff)) {
		struct moat_l3 r;

		moat_parse(data, data_end, &r);
		fw_pack(&r, &st->handoff[0], &st->handoff[1]);
		st->handoff[2] = r.frag_id;
	}
	*offs = *(volatile __u32 *)&st->handoff[0];
	*meta = *(volatile __u32 *)&st->handoff[1];
	*frag_id = *(volatile __u32 *)&st->handoff[2];
}

/* What fw_judge found besides the reason. */
struct fw_out {
	__u32 rule;      /* deciding rule id */
	__u8 has_rule;   /* count the packet for that rule */
	__u8 log;        /* the deciding rule has log: true (and this packet is its verdict) */
	__u8 keyed;      /* dropped with its connection key complete in *k */
	__u32 hash;      /* fw_ct_hash(k), once the key is complete */
	__u32 tag;       /* the flow tag of hash's slot, as read with the hash */
};

/* One packet on its way through fw_judge's steps. */
struct fw_pkt {
	void *data;
	void *data_end;
	__u64 len;
	__u8 dir;
	__u8 local_is_src; /* sent by this host (egress) */
	__u8 family;
	__u8 proto;
	__u8 icmp_error;   /* an ICMP error: judged alone, never tracked */
	__u8 tcp_flags;    /* TCP header byte 13 (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10) */
	__u8 ct_assured;   /* the tracked entry found lives in fw_ct_assured */
	__u8 cls_known;    /* cls holds the remote's class */
	__u8 host_maybe;   /* fw_hostbits: the remote may be in fw_host4/6 */
	struct fw_class cls;
	__be16 pport;      /* the policy port: tcp/udp destination, icmp type << 8 | code */
	__u8 pad2[2];
	__u32 ifindex;
	__u64 now;         /* the coarse clock (read once per packet at most) */
};

/* The remote's class, looked up once per packet at most. */
static __always_inline const struct fw_class *fw_pkt_class(const struct fw_config *cfg,
							  struct fw_pkt *p,
							  const struct fw_ct_key *k)
{
	if (!p->cls_known) {
		fw_class_of(cfg, k, p->host_maybe, &p->cls);
		p->cls_known = 1;
	}
	return &p->cls;
}

/* Keep judging (not a FW_STAT_* reason: those are < FW_STAT_MAX). */
#define FW_NEXT 0xFFFFu

/* Forgets a conntrack entry and its presence-filter mark (only a delete that
 * succeeded gives the mark back, so the filter never says "absent" wrongly). */
static __always_inline void fw_ct_forget(int assured, const struct fw_ct_key *k, __u32 *seen)
{
	long err = assured ? bpf_map_delete_elem(&fw_ct_assured, k) : bpf_map_delete_elem(&fw_ct, k);

	if (err == 0) {
		if (seen)
			__sync_fetch_and_add(seen, (__u32)-1); /* atomic decrement */
		moat_count_add(&fw_stats, assured ? FW_STAT_CT_FORGOT_ASSURED : FW_STAT_CT_FORGOT_NEW, 0);
	}
}

/* Step 1: the network layer. Addresses, protocol and family into the
 * connection key (zeroed, 8-byte aligned); non-IP passes, a stack too deep or
 * a broken header drops. */
static __always_inline __u32 fw_step_l3(struct fw_pkt *p, __u32 offs, __u32 meta,
					struct fw_ct_key *k)
{
	__u16 eth_proto = meta & 0xFFFF;
	__u32 off = offs & 0xFFFF;
	__u8 *ip;

	/* A frame passes unjudged only if the kernel cannot deliver it as IP. */
	if (meta & META_VLAN_DEEP)
		return FW_STAT_DROP_VLAN_DEPTH;
	if (eth_proto != ETH_P_IP && eth_proto != ETH_P_IPV6)
		return FW_STAT_PASS_NON_IP;
	if (!(meta & META_L3_OK) || off > FW_MAX_OFF)
		return FW_STAT_DROP_MALFORMED;
	ip = p->data + off;
	/* Word loads (packet reads need no alignment here; byte copies cost
	 * four instructions a byte). The source is the remote on ingress. */
	if (eth_proto == ETH_P_IP) {
		__u64 s, d;

		if ((void *)(ip + 20) > p->data_end)
			return FW_STAT_DROP_MALFORMED;
		p->family = 4;
		s = *(const __u32 *)(ip + 12);
		d = *(const __u32 *)(ip + 16);
		/* Whole words (the bytes after the address are zero on this
		 * little-endian target): fw_ct_hash then reads each word from one
		 * store (a word load over a narrower store stalls the CPU until
		 * the store retires; perf showed it at the hash). */
		*(__u64 *)k->local = p->local_is_src ? s : d;
		*(__u64 *)k->remote = p->local_is_src ? d : s;
	} else {
		__u64 s0, s1, d0, d1;

		if ((void *)(ip + 40) > p->data_end)
			return FW_STAT_DROP_MALFORMED;
		p->family = 6;
		s0 = *(const __u64 *)(ip + 8);
		s1 = *(const __u64 *)(ip + 16);
		d0 = *(const __u64 *)(ip + 24);
		d1 = *(const __u64 *)(ip + 32);
		((__u64 *)k->local)[0] = p->local_is_src ? s0 : d0;
		((__u64 *)k->local)[1] = p->local_is_src ? s1 : d1;
		((__u64 *)k->remote)[0] = p->local_is_src ? d0 : s0;
		((__u64 *)k->remote)[1] = p->local_is_src ? d1 : s1;
	}
	p->proto = (meta >> 16) & 0xFF;
	k->proto = p->proto;
	k->family = p->family;
	return FW_NEXT;
}

/* The fragment key of a packet from its connection key (fragments only). */
static __always_inline void fw_frag_key_of(struct fw_frag_key *fk, const struct fw_ct_key *k,
					   int local_is_src, __u32 id)
{
	const __u64 *l = (const __u64 *)k->local, *r = (const __u64 *)k->remote;
	__u64 *s = (__u64 *)fk->src, *d = (__u64 *)fk->dst;

	s[0] = local_is_src ? l[0] : r[0];
	s[1] = local_is_src ? l[1] : r[1];
	d[0] = local_is_src ? r[0] : l[0];
	d[1] = local_is_src ? r[1] : l[1];
	fk->id = id;
	fk->proto = k->proto;
	fk->family = k->family;
}

/* Step 2: the transport header. Ports (or the echo id) into the connection
 * key, the policy port; NDP passes, ICMP errors quoting a tracked connection
 * pass, cut headers drop. */
static __always_inline __u32 fw_step_l4(void *ctx, struct fw_pkt *p, __u32 offs,
					struct fw_ct_key *k)
{
	__u32 off = offs >> 16, ports = 0;
	__be16 dport = 0;
	__u8 *l4;

	if (off > FW_MAX_OFF)
		return FW_STAT_DROP_MALFORMED;
	l4 = p->data + off;
	if (p->proto == IPPROTO_TCP) {
		if ((void *)(l4 + sizeof(struct tcphdr)) > p->data_end)
			return FW_STAT_DROP_MALFORMED;
		p->tcp_flags = l4[13];
	}
	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) {
		if ((void *)(l4 + 8) > p->data_end)
			return FW_STAT_DROP_MALFORMED;
		ports = fw_ct_ports(p->proto, l4, p->local_is_src, &dport);
		p->pport = dport;
	} else if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6) {
		if ((void *)(l4 + 8) > p->data_end)
			return FW_STAT_DROP_MALFORMED;
		if (p->proto == IPPROTO_ICMPV6 && p->family == 6 && icmp6_is_ndp(l4[0]))
			return FW_STAT_PASS_NDP;
		p->icmp_error = icmp_is_error(p->proto, l4[0]);
		if (p->icmp_error &&
		    (p->dir == FW_DIR_INGRESS ? fw_related_xdp(ctx, off + 8, p->family)
					      : fw_related_tc(ctx, off + 8, p->family)))
			return FW_STAT_PASS_RELATED;
		ports = fw_ct_ports(p->proto, l4, p->local_is_src, &dport);
		p->pport = bpf_htons(((__u16)l4[0] << 8) | l4[1]);
	}
	fw_key_tail(k, ports, p->proto, p->family);
	return FW_NEXT;
}

/* Step 3: the tracked connection, if any and not idle past its timeout (an
 * expired one is forgotten: this packet is then a first packet). The
 * presence filter answers "certainly not tracked" without the lookup
 * (seen_count: its slot, read by fw_judge with the hash). */
static __always_inline struct fw_ct_val *fw_step_ct_find(const struct fw_config *cfg,
							 struct fw_pkt *p,
							 const struct fw_ct_key *k,
							 __u32 *seen, __u32 seen_count)
{
	struct fw_ct_val *ct = NULL;

	if (seen_count != 0) {
		/* Assured connections first: they carry most packets. */
		ct = bpf_map_lookup_elem(&fw_ct_assured, k);
		p->ct_assured = ct != NULL;
		if (!ct)
			ct = bpf_map_lookup_elem(&fw_ct, k);
	}
	if (ct) {
		__u64 now = p->now, last = ct->last_seen_ns;
		__u32 timeout = p->proto == IPPROTO_UDP ? cfg->timeout_udp : cfg->timeout_other;

		if (p->proto == IPPROTO_TCP) {
			__u32 st = ct->tcp_state;

			/* Unknown states (and NONE: entries of an older program) read
			 * timeout_tcp from their slot. */
			timeout = cfg->tcp_timeouts[st & (FW_TCP_TIMEOUT_SLOTS - 1)];
		}

		/* (another CPU may have stamped the entry after we read the clock) */
		if (now > last && now - last > (__u64)timeout * 1000000000ULL) {
			fw_ct_forget(p->ct_assured, k, seen);
			moat_count_add(&fw_stats, FW_STAT_CT_EXPIRED, p->len);
			ct = NULL;
		}
	}
	return ct;
}

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* The TCP state a connection moves to with this packet (see abi/fw.h);
 * FW_TCP_NONE: the entry admits nothing (a closed tuple): forget it and judge
 * the packet as a new connection. */
static __always_inline __u8 fw_tcp_next(__u8 s, __u8 flags, int orig)
{
	if (flags & TCP_RST)
		return FW_TCP_CLOSE;
	if ((flags & TCP_SYN) && (s == FW_TCP_TIME_WAIT || s == FW_TCP_CLOSE))
		return FW_TCP_NONE;
	switch (s) {
	case FW_TCP_CLOSE:
		return FW_TCP_NONE;
	case FW_TCP_SYN_SENT:
		if ((flags & TCP_SYN) && (flags & TCP_ACK) && !orig)
			return FW_TCP_SYN_RECV;
		break;
	case FW_TCP_SYN_RECV:
		if (flags & TCP_FIN)
			return orig ? FW_TCP_FIN_WAIT : FW_TCP_CLOSE_WAIT;
		if ((flags & TCP_ACK) && !(flags & TCP_SYN) && orig)
			return FW_TCP_ESTABLISHED;
		break;
	case FW_TCP_ESTABLISHED:
		if (flags & TCP_FIN)
			return orig ? FW_TCP_FIN_WAIT : FW_TCP_CLOSE_WAIT;
		break;
	case FW_TCP_FIN_WAIT:
		if ((flags & TCP_FIN) && !orig)
			return FW_TCP_LAST_ACK;
		break;
	case FW_TCP_CLOSE_WAIT:
		if ((flags & TCP_FIN) && orig)
			return FW_TCP_LAST_ACK;
		break;
	case FW_TCP_LAST_ACK:
		if ((flags & TCP_ACK) && !(flags & TCP_FIN))
			return FW_TCP_TIME_WAIT;
		break;
	}
	return s;
}

/* The state of a new TCP connection admitted with this packet. */
static __always_inline __u8 fw_tcp_first(__u8 flags)
{
	if ((flags & TCP_SYN) && !(flags & TCP_ACK))
		return FW_TCP_SYN_SENT;
	return FW_TCP_ESTABLISHED; /* picked up mid-stream (loose, as nf_conntrack) */
}

/* A connection that saw traffic both ways (TCP: and got through its
 * handshake) moves to fw_ct_assured, where floods of one-sided new flows
 * (which only ever insert into fw_ct) cannot evict it. The presence filter
 * is untouched: the entry moves, its count stays. */
static __always_inline void fw_ct_assure(const struct fw_ct_val *ct, const struct fw_ct_key *k)
{
	struct fw_ct_val v = *ct;
	long err = bpf_map_update_elem(&fw_ct_assured, k, &v, BPF_NOEXIST);

	if (err == 0)
		moat_count_add(&fw_stats, FW_STAT_CT_ASSURED, 0);
	/* Moved here, or by another CPU at the same time (-EEXIST): either way
	 * the copy in fw_ct goes (whichever CPU deletes it counts the move). */
	if ((err == 0 || err == -17 /* EEXIST */) && bpf_map_delete_elem(&fw_ct, k) == 0)
		moat_count_add(&fw_stats, FW_STAT_CT_MOVED, 0);
}

/* Step 4a: a packet of a tracked connection. Current generation: passes;
 * else the connection's first packet is judged by the policy in force, and
 * a connection it no longer allows is cut. tcp_next: the TCP state this
 * packet moves the connection to (computed once by the caller). */
static __always_inline __u32 fw_step_tracked(const struct fw_config *cfg, struct fw_pkt *p,
					     struct fw_ct_val *ct, const struct fw_ct_key *k,
					     __u32 *seen, __u8 tcp_next, struct fw_out *o)
{
	__u32 reason, rule = 0, action;

	if (ct->generation == cfg->generation) {
		reason = FW_STAT_PASS_ESTABLISHED;
		rule = ct->rule;
	} else {
		action = fw_verdict_of(cfg, fw_pkt_class(cfg, p, k), k->proto,
				   (__u32)ct->dir0 << 16 | ct->port0, &rule);
		if ((action & 0xFF) != FW_ACTION_ALLOW) {
			fw_ct_forget(p->ct_assured, k, seen);
			o->rule = rule;
			o->has_rule = 1;
			o->log = (action >> 8) & FW_FLAG_LOG;
			o->keyed = 1;
			return FW_STAT_DROP_REVOKED;
		}
		ct->generation = cfg->generation;
		ct->rule = rule;
		ct->flags = action >> 8;
		reason = FW_STAT_PASS_RECHECKED;
	}
	if (p->proto == IPPROTO_TCP)
		ct->tcp_state = tcp_next;
	ct->last_seen_ns = p->now;
	__sync_fetch_and_add(&ct->packets, 1);
	__sync_fetch_and_add(&ct->bytes, p->len);
	if (p->dir != ct->dir0)
		ct->replied = 1;
	if (!p->ct_assured && ct->replied &&
	    (p->proto != IPPROTO_TCP ||
	     (tcp_next >= FW_TCP_ESTABLISHED && tcp_next <= FW_TCP_LAST_ACK)))
		fw_ct_assure(ct, k);
	o->rule = rule;
	o->has_rule = 1;
	return reason;
}

/* Step 4b: a new connection. The policy decides; an allowed one is tracked
 * (not ICMP errors). */
static __always_inline __u32 fw_step_new(const struct fw_config *cfg, struct fw_pkt *p,
					 const struct fw_ct_key *k, __u32 *seen, struct fw_out *o)
{
	__u32 rule = 0;
	__u32 action = fw_verdict_of(cfg, fw_pkt_class(cfg, p, k), k->proto,
				 (__u32)p->dir << 16 | p->pport, &rule);
	__u8 flags = action >> 8;

	o->rule = rule;
	o->has_rule = 1;
	o->log = flags & FW_FLAG_LOG;
	if ((action & 0xFF) != FW_ACTION_ALLOW) {
		o->keyed = 1;
		return rule ? FW_STAT_DROP_RULE : FW_STAT_DROP_DEFAULT;
	}
	if (!p->icmp_error && !(p->proto == IPPROTO_TCP && (p->tcp_flags & TCP_RST))) {
		struct fw_ct_val v = {};
		v.first_seen_ns = p->now;
		v.last_seen_ns = v.first_seen_ns;
		v.packets = 1;
		v.bytes = p->len;
		v.generation = cfg->generation;
		v.rule = rule;
		v.port0 = p->pport;
		v.dir0 = p->dir;
		v.flags = flags;
		v.ifindex = p->ifindex;
		v.tcp_state = p->proto == IPPROTO_TCP ? fw_tcp_first(p->tcp_flags) : FW_TCP_NONE;
		/* Count before inserting: a reader never sees the entry with its
		 * slot at zero. */
		if (seen)
			__sync_fetch_and_add(seen, 1);
		if (bpf_map_update_elem(&fw_ct, k, &v, BPF_NOEXIST) == 0)
			moat_count_add(&fw_stats, FW_STAT_CT_NEW, 0);
		else if (seen)
			__sync_fetch_and_add(seen, (__u32)-1); /* atomic decrement */
	}
	return rule ? FW_STAT_PASS_RULE : FW_STAT_PASS_DEFAULT;
}

/*
 * The decision for one parsed packet, in steps: network layer, later
 * fragments, transport layer, tracked connection or new connection, then
 * the fragment record. Returns the FW_STAT_* reason (its verdict:
 * fw_reason_verdict), builds the connection key in *k (zeroed by the caller)
 * and fills *o. Counting, flows and events are the caller's.
 */
static __always_inline __u32 fw_judge(void *ctx, void *data, void *data_end, __u32 offs,
				      __u32 meta, __u32 frag_id, __u8 dir, __u32 ifindex,
				      const struct fw_config *cfg, __u64 now, struct fw_ct_key *k,
				      struct fw_out *o)
{
	struct fw_pkt p = {
		.data = data,
		.data_end = data_end,
		.len = data_end - data,
		.dir = dir,
		.local_is_src = dir == FW_DIR_EGRESS,
		.ifindex = ifindex,
		.now = now,
	};
	struct fw_ct_val *ct;
	__u32 reason, *seen, seen_count;
	__u8 tcp_next = FW_TCP_NONE;

	reason = fw_step_l3(&p, offs, meta, k);
	if (reason != FW_NEXT)
		return reason;
	if (meta & META_FRAG_LATER) {
		/* (zeroed here, not for every packet: its padding is key) */
		struct fw_frag_key fk __attribute__((aligned(8))) = {};

		fw_frag_key_of(&fk, k, p.local_is_src, frag_id);
		return bpf_map_lookup_elem(&fw_frag, &fk) ? FW_STAT_PASS_FRAGMENT
							  : FW_STAT_DROP_FRAGMENT;
	}
	reason = fw_step_l4(ctx, &p, offs, k);
	if (reason != FW_NEXT)
		return reason;

	o->hash = fw_ct_hash(k);
	{
		/* A flooded packet's three random reads (its flow tag, its
		 * presence-filter slot, its remote's fw_hostbits word) are made
		 * here, side by side, so the CPU waits for them at once instead of
		 * one after another hundreds of instructions apart (perf: the
		 * hostbits read alone was the hottest spot at N=10k). */
		__u32 *tag = fw_line_slot(&fw_flowtags, o->hash & (FW_FLOW_SLOTS - 1));

		seen = fw_line_slot(&fw_ctseen, o->hash & (FW_CTSEEN_SLOTS - 1));
		p.host_maybe = k->family == 4 ? fw_host_maybe(cfg, k->remote, 1)
					      : fw_host_maybe(cfg, k->remote, 4);
		o->tag = tag ? *tag : 0;
		seen_count = seen ? *seen : 1;
	}
	if (cfg->maps & FW_HAS_BLOCK) {
		/* A blocklisted remote drops before any connection state. */
		const struct fw_class *cls = fw_pkt_class(cfg, &p, k);

		if (cls->block_rule[0]) {
			/* (branches, not an index: the verifier refuses clang's
			 * pointer arithmetic on the stack copy) */
			if (p.dir == FW_DIR_EGRESS) {
				o->rule = cls->block_rule[1];
				o->log = cls->block_flags[1] & FW_FLAG_LOG;
			} else {
				o->rule = cls->block_rule[0];
				o->log = cls->block_flags[0] & FW_FLAG_LOG;
			}
			o->has_rule = 1;
			o->keyed = 1;
			return FW_STAT_DROP_RULE;
		}
	}
	ct = fw_step_ct_find(cfg, &p, k, seen, seen_count);
	if (ct && p.proto == IPPROTO_TCP) {
		tcp_next = fw_tcp_next(ct->tcp_state, p.tcp_flags, p.dir == ct->dir0);
		if (ct->tcp_state != FW_TCP_NONE && tcp_next == FW_TCP_NONE) {
			/* A closed tuple admits nothing: this packet is a first packet. */
			fw_ct_forget(p.ct_assured, k, seen);
			ct = NULL;
		}
	}
	reason = ct ? fw_step_tracked(cfg, &p, ct, k, seen, tcp_next, o)
		    : fw_step_new(cfg, &p, k, seen, o);
	if (fw_reason_verdict(reason) == FW_PASS && (meta & META_FRAG_MORE)) {
		struct fw_frag_key fk __attribute__((aligned(8))) = {};
		__u32 one = 1;

		fw_frag_key_of(&fk, k, p.local_is_src, frag_id);
		bpf_map_update_elem(&fw_frag, &fk, &one, BPF_ANY);
	}
	return reason;
}

/* One event's (or new denied flow's) worth of credit from a per-CPU bucket. */
static __always_inline int fw_take(struct fw_bucket *b, __u64 now, __u64 cost, __u64 cap)
{
	return moat_bucket_take(&b->last_ns, &b->credit_ns, now, cost, cap);
}

static __always_inline void fw_evcount(__u32 idx)
{
	moat_count_one(&fw_evstats, idx);
}

static __always_inline int fw_key_eq(const struct fw_ct_key *a, const struct fw_ct_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4];
}

/*
 * Records a dropped packet in its denied flow: fw_flows is direct-mapped by
 * the connection hash, so this is one array slot whatever the flood. A flow
 * in its slot is updated; another flow takes the slot only if the flow
 * bucket allows (a new denied flow costs credit), and a flow it pushes out
 * is counted (FW_EV_FLOWS_REPLACED). The slot's tag (fw_flowtags) is read
 * first: under a flood of new flows it differs, and the slot itself is only
 * touched when the bucket lets the new flow in.
 */
static __always_inline void fw_flow_denied(const struct fw_config *cfg, struct fw_evstate *st,
					   __u64 now, const struct fw_ct_key *k, const struct fw_out *o,
					   __u32 reason, __u8 dir, __u32 ifindex, __u64 len)
{
	__u32 hash = o->hash, rule = o->rule, slot = hash & (FW_FLOW_SLOTS - 1);
	int mine = o->tag == hash; /* (the tag's value was read with the hash) */
	__u32 *tag;
	struct fw_flow_slot *f;

	/* Under a flood of new flows the tag differs and the bucket is empty:
	 * counted without touching the slot. */
	if (!mine && !fw_take(&st->flow, now, cfg->flow_cost_ns, cfg->flow_cap_ns)) {
		fw_evcount(FW_EV_FLOWS_SKIPPED);
		return;
	}
	tag = fw_line_slot(&fw_flowtags, slot);
	f = bpf_map_lookup_elem(&fw_flows, &slot);
	if (!tag || !f)
		return;
	if (mine && f->val.first_seen_ns && fw_key_eq(&f->key, k)) {
		f->val.last_seen_ns = now;
		f->val.reason = reason;
		f->val.rule = rule;
		__sync_fetch_and_add(&f->val.packets, 1);
		__sync_fetch_and_add(&f->val.bytes, len);
		return;
	}
	/* A tag that matched another flow's key (a hash collision) costs
	 * credit as any new flow does. */
	if (mine && !fw_take(&st->flow, now, cfg->flow_cost_ns, cfg->flow_cap_ns)) {
		fw_evcount(FW_EV_FLOWS_SKIPPED);
		return;
	}
	if (f->val.first_seen_ns)
		fw_evcount(FW_EV_FLOWS_REPLACED);
	*tag = hash;
	/* (two CPUs taking one slot at once may mix their records: a flow
	 * record is a sample; the exact counts are fw_stats and fw_rule_stats) */
	f->key = *k;
	f->val.first_seen_ns = now;
	f->val.last_seen_ns = now;
	f->val.packets = 1;
	f->val.bytes = len;
	f->val.rule = rule;
	f->val.ifindex = ifindex;
	f->val.reason = reason;
	f->val.dir = dir;
}

/*
 * One packet qualified for an event: sample, rate limit, then copy the
 * frame's first bytes into the ring buffer. Every outcome is counted.
 */
static __always_inline void fw_event(void *ctx, const struct fw_config *cfg,
				     struct fw_evstate *st, __u64 now, __u8 dir, __u32 ifindex,
				     __u8 kind, __u32 reason, __u32 rule, __u64 len)
{
	struct fw_event *e;
	__u32 cap;

	/* (FW_EV_SEEN is not counted: it is the sum of the four outcomes) */
	if (cfg->ev_sample > 1 && (st->seq++ % cfg->ev_sample) != 0) {
		fw_evcount(FW_EV_SAMPLED_OUT);
		return;
	}
	if (!fw_take(&st->ev, now, cfg->ev_cost_ns, cfg->ev_cap_ns)) {
		fw_evcount(FW_EV_RATE_LIMITED);
		return;
	}
	e = bpf_ringbuf_reserve(&fw_events, sizeof(*e), 0);
	if (!e) {
		fw_evcount(FW_EV_LOST);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->ifindex = ifindex;
	e->rule = rule;
	e->pkt_len = len;
	e->kind = kind;
	e->reason = reason;
	e->dir = dir;
	__builtin_memset(e->pad, 0, sizeof(e->pad));
	cap = len < FW_EVENT_CAP ? len : FW_EVENT_CAP;
	if (cap < 1)
		cap = 1;
	if (dir == FW_DIR_INGRESS) {
		if (bpf_xdp_load_bytes(ctx, 0, e->data, cap))
			cap = 0;
	} else {
		if (bpf_skb_load_bytes(ctx, 0, e->data, cap))
			cap = 0;
	}
	e->cap_len = cap;
	bpf_ringbuf_submit(e, 0);
	fw_evcount(FW_EV_EMITTED);
}

/*
 * The decision for one parsed packet (ctx: an xdp_md or a __sk_buff, dir
 * saying which), counted, recorded and reported. The parser's result
 * reaches it through fw_evstate's handoff words, written and read back by
 * fw_handoff: values read from a map are unknown to the verifier, so it
 * checks this once for all parser paths, as a global function would make it
 * do, without the function's call and return (~8% of the drop path here,
 * where every return goes through the SRSO safe-return thunk).
 */
static __always_inline int fw_decide(void *ctx, void *pkt, void *pkt_end, __u8 dir)
{
	__u32 zero = 0, reason, offs, meta, frag_id, ifindex;
	struct fw_config *cfg = bpf_map_lookup_elem(&fw_config, &zero);
	struct fw_evstate *st = bpf_map_lookup_elem(&fw_evstate, &zero);
	struct fw_ct_key k __attribute__((aligned(8))) = {};
	struct fw_out o = {};
	void *data, *data_end;
	__u64 now, len;
	int verdict;

	if (!cfg || !st)
		return FW_PASS;
	fw_handoff(st, pkt, pkt_end, &offs, &meta, &frag_id);
	/* (the packet pointers read afresh: the parser's bounds checks are not
	 * carried into the core, so every parser path meets in one state) */
	if (dir == FW_DIR_INGRESS) {
		struct xdp_md *x = ctx;

		data = (void *)(long)x->data;
		data_end = (void *)(long)x->data_end;
		ifindex = x->ingress_ifindex;
	} else {
		struct __sk_buff *skb = ctx;

		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		ifindex = skb->ifindex;
	}
	len = data_end - data;
	/* One clock for the packet: conntrack, flows, buckets. */
	now = moat_clock_now(&st->clock_jiffies, &st->clock_ns);
	reason = fw_judge(ctx, data, data_end, offs, meta, frag_id, dir, ifindex, cfg, now, &k,
			  &o);
	if (o.has_rule)
		moat_count_add(&fw_rule_stats, o.rule, len);
	verdict = fw_stat(reason, len);
	moat_count_add(&fw_ifstats, (ifindex & (FW_IF_SLOTS - 1)) << 2 | (__u32)dir << 1 | (verdict == FW_DROP),
		 len);
	if (verdict == FW_DROP && (o.keyed || cfg->log_drops || o.log)) {
		if (o.keyed)
			fw_flow_denied(cfg, st, now, &k, &o, reason, dir, ifindex, len);
		if (cfg->log_drops || o.log)
			fw_event(ctx, cfg, st, now, dir, ifindex, FW_EVENT_DROP, reason, o.rule, len);
	} else if (o.log) {
		fw_event(ctx, cfg, st, now, dir, ifindex, FW_EVENT_LOG, reason, o.rule, len);
	}
	return verdict;
}

SEC("xdp")
int fw_xdp(struct xdp_md *ctx)
{
	if (fw_decide(ctx, (void *)(long)ctx->data, (void *)(long)ctx->data_end,
		      FW_DIR_INGRESS) != FW_PASS)
		return XDP_DROP;
	/* Passed: the next family on this interface, if one is chained. */
	bpf_tail_call(ctx, &fw_next, 0);
	return XDP_PASS;
}

SEC("classifier")
int fw_tc_egress(struct __sk_buff *skb)
{
	/* Headers of locally sent packets are normally linear; make sure. */
	if ((long)skb->data + 256 > (long)skb->data_end && skb->len > skb->data_end - skb->data)
		bpf_skb_pull_data(skb, skb->len < 256 ? skb->len : 256);
	return fw_decide(skb, (void *)(long)skb->data, (void *)(long)skb->data_end,
			 FW_DIR_EGRESS) == FW_PASS
		       ? TC_ACT_OK
		       : TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
