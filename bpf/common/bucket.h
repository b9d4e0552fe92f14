/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * bucket.h — a token bucket for rate-limiting events and table inserts in the
 * kernel, shared by the families. Credit is kept in nanoseconds and grows with
 * time up to a cap; the loader precomputes what one token costs (1e9 / rate),
 * so there is no division here. Per-CPU state: no atomics needed.
 */
#ifndef MOAT_BUCKET_H
#define MOAT_BUCKET_H

#include <linux/types.h>

/*
 * Takes one token (cost ns of credit) from the bucket {*last_ns, *credit_ns}
 * at time now; returns 1 if there was credit, 0 if empty (or cost is 0: none
 * allowed).
 */
static __always_inline int moat_bucket_take(__u64 *last_ns, __u64 *credit_ns, __u64 now,
					    __u64 cost, __u64 cap)
{
	__u64 credit;

	if (!cost)
		return 0;
	credit = *credit_ns + (now > *last_ns ? now - *last_ns : 0);
	if (credit > cap)
		credit = cap;
	*last_ns = now;
	if (credit < cost) {
		*credit_ns = credit;
		return 0;
	}
	*credit_ns = credit - cost;
	return 1;
}

#endif /* MOAT_BUCKET_H */
