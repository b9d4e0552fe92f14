/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * drop.bpf.c — TEST/BENCH ONLY. The trivial XDP program that drops every
 * frame: the floor (and live-traffic ceiling) the benchmarks compare against.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int drop_xdp(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
