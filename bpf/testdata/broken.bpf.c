/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * broken.bpf.c — TEST ONLY. Compiles, but the verifier must reject it: it
 * reads a packet byte without checking data_end. Used by the test that checks
 * moat reports verifier rejections readably (name, reason, source line).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int broken_xdp(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;
	unsigned char first = data[14]; /* no bounds check: the verifier says no */

	return first == 0x45 ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
