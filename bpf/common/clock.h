/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * clock.h — the coarse monotonic clock (bpf_ktime_get_coarse_ns) read at most
 * once per tick per CPU. On these machines the helper costs ~25 ns a call
 * while bpf_jiffies64 costs ~1 ns, and the coarse clock only moves when
 * jiffies do: each CPU keeps the last (jiffies, coarse ns) pair it read and
 * reads the clock again only when jiffies moved. The value returned can be one
 * tick older than the helper's (jiffies may move just before the coarse clock
 * of the same tick); it never goes backwards on one CPU.
 */
#ifndef MOAT_CLOCK_H
#define MOAT_CLOCK_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/* *jiffies and *ns: per-CPU state (zero at first, as map values are). */
static __always_inline __u64 moat_clock_now(__u64 *jiffies, __u64 *ns)
{
	__u64 j = bpf_jiffies64();

	if (*jiffies != j || !*ns) {
		*jiffies = j;
		*ns = bpf_ktime_get_coarse_ns();
	}
	return *ns;
}

#endif /* MOAT_CLOCK_H */
