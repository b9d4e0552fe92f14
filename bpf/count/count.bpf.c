/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * count.bpf.c — the XDP packet counter behind `moat count` and `moat demo`.
 * Classifies every frame (see parse.h), adds it to a per-CPU counter of its
 * class, and passes it. Userspace sums the CPUs.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "../common/abi.h"
#include "../common/parse.h"
#include "../common/stats.h"

/* count_stats: see abi.h (COUNT_MAP_STATS). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNT_CLASS_MAX);
	__type(key, __u32);
	__type(value, struct count_value);
} count_stats SEC(".maps");

static __always_inline __u32 count_class(const struct moat_l3 *r)
{
	if (r->vlan_deep)
		return COUNT_CLASS_VLAN_TOO_DEEP;
	switch (r->eth_proto) {
	case ETH_P_ARP:
		return COUNT_CLASS_ARP;
	case ETH_P_IP:
		if (!r->l3_ok)
			return COUNT_CLASS_IPV4_OTHER;
		switch (r->l4_proto) {
		case IPPROTO_TCP:  return COUNT_CLASS_IPV4_TCP;
		case IPPROTO_UDP:  return COUNT_CLASS_IPV4_UDP;
		case IPPROTO_ICMP: return COUNT_CLASS_IPV4_ICMP;
		}
		return COUNT_CLASS_IPV4_OTHER;
	case ETH_P_IPV6:
		if (!r->l3_ok)
			return COUNT_CLASS_IPV6_OTHER;
		switch (r->l4_proto) {
		case IPPROTO_TCP:    return COUNT_CLASS_IPV6_TCP;
		case IPPROTO_UDP:    return COUNT_CLASS_IPV6_UDP;
		case IPPROTO_ICMPV6: return COUNT_CLASS_IPV6_ICMP;
		}
		return COUNT_CLASS_IPV6_OTHER;
	}
	return COUNT_CLASS_OTHER;
}

SEC("xdp")
int count_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct moat_l3 r;

	moat_parse(data, data_end, &r);
	moat_count_add(&count_stats, count_class(&r), (__u64)(data_end - data));
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
