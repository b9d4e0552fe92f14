/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * gen.bpf.c — BENCH ONLY. Traffic generator for BPF_PROG_TEST_RUN with
 * BPF_F_TEST_XDP_LIVE_FRAMES: gives each IPv4/UDP frame a new source address
 * (low 16 bits) and source port (gen2_xdp: every second frame), then XDP_TX
 * sends it out of the interface
 * the run names, to the veth peer.
 * genlb_xdp / genlb1_xdp write the whole Ethernet/IPv4/UDP header from the
 * template in gen_tmpl on every run (behind a forwarder, live-frames pages
 * come back with what the receivers wrote into them): a new flow per frame,
 * or always the same one.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} gen_seq SEC(".maps");

static __always_inline __u16 csum_replace4(__u16 check, __u32 from, __u32 to)
{
	__u32 sum = (__u16)~check;

	sum += (__u16)~(from >> 16) + (__u16)~(from & 0xFFFF);
	sum += (to >> 16) + (to & 0xFFFF);
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return ~sum;
}

/* Frame number s of the run becomes flow s / per_flow. */
static __always_inline int gen(struct xdp_md *ctx, __u32 per_flow)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)(ip + 1);
	__u32 zero = 0, *seq, s, from, to;

	if ((void *)(udp + 1) > data_end)
		return XDP_DROP;
	seq = bpf_map_lookup_elem(&gen_seq, &zero);
	if (!seq)
		return XDP_DROP;
	s = (*seq)++ / per_flow;
	/* One's-complement sums work on the raw (network-order) words, like
	 * the checksum field itself. */
	from = ip->saddr;
	to = bpf_htonl((bpf_ntohl(from) & 0xFFFF0000) | (s & 0xFFFF));
	ip->saddr = to;
	ip->check = csum_replace4(ip->check, from, to);
	udp->source = bpf_htons(1024 + (s % 60000));
	udp->check = 0;
	return XDP_TX;
}

/* Every frame a new flow. */
SEC("xdp")
int gen_xdp(struct xdp_md *ctx)
{
	return gen(ctx, 1);
}

/* Two frames per flow (a flow the receiver sees twice, as a real client's
 * retransmission or second datagram). */
SEC("xdp")
int gen2_xdp(struct xdp_md *ctx)
{
	return gen(ctx, 2);
}

#define GEN_HDR 42 /* Ethernet + IPv4 (no options) + UDP */

struct gen_tmpl {
	__u8 hdr[GEN_HDR];
	__u8 pad[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_tmpl);
} gen_tmpl SEC(".maps");

static __always_inline int genlb(struct xdp_md *ctx, int new_flows)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct gen_tmpl *t;
	struct iphdr *ip;
	struct udphdr *udp;
	__u32 zero = 0, *seq, s, from, to;

	if (data + GEN_HDR > data_end)
		return XDP_DROP;
	t = bpf_map_lookup_elem(&gen_tmpl, &zero);
	seq = bpf_map_lookup_elem(&gen_seq, &zero);
	if (!t || !seq)
		return XDP_DROP;
	__builtin_memcpy(data, t->hdr, GEN_HDR);
	if (!new_flows)
		return XDP_TX;
	ip = data + sizeof(struct ethhdr);
	udp = (void *)(ip + 1);
	s = (*seq)++;
	from = ip->saddr;
	to = bpf_htonl((bpf_ntohl(from) & 0xFFFF0000) | (s & 0xFFFF));
	ip->saddr = to;
	ip->check = csum_replace4(ip->check, from, to);
	udp->source = bpf_htons(1024 + ((s >> 16) % 60000));
	udp->check = 0;
	return XDP_TX;
}

SEC("xdp")
int genlb_xdp(struct xdp_md *ctx)
{
	return genlb(ctx, 1);
}

SEC("xdp")
int genlb1_xdp(struct xdp_md *ctx)
{
	return genlb(ctx, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
