/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * stats.h — kernel-only counting helpers shared by the families: per-CPU
 * {packets, bytes} slots (struct count_value) and plain per-CPU u64 counters.
 * Userspace sums the CPUs.
 */
#ifndef MOAT_STATS_H
#define MOAT_STATS_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#include "abi.h"

/* Adds one packet of `len` bytes to slot `idx` of a per-CPU count_value array. */
static __always_inline void moat_count_add(void *map, __u32 idx, __u64 len)
{
	struct count_value *v = bpf_map_lookup_elem(map, &idx);

	if (v) {
		v->packets += 1;
		v->bytes += len;
	}
}

/* Adds one to slot `idx` of a per-CPU __u64 array. */
static __always_inline void moat_count_one(void *map, __u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(map, &idx);

	if (v)
		*v += 1;
}

#endif /* MOAT_STATS_H */
