/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* abi/count.h — the packet counter and the parser limits. Included through ../abi.h; rules there. */
#ifndef MOAT_ABI_COUNT_H
#define MOAT_ABI_COUNT_H

#include <linux/types.h>

/* ---------------------------------------------------------------------------
 * count — the XDP packet counter (bpf/count/count.bpf.c)
 * ------------------------------------------------------------------------- */

/* Program: attached at XDP, classifies every frame, counts it, returns XDP_PASS. */
#define COUNT_PROG_XDP "count_xdp"

/*
 * Map count_stats: BPF_MAP_TYPE_PERCPU_ARRAY
 *   key:    __u32 class index (COUNT_CLASS_*)
 *   value:  struct count_value (per CPU)
 *   writer: count_xdp (one increment per frame, on the CPU that saw it)
 *   reader: `moat count` and `moat demo` (sum over CPUs in userspace)
 */
#define COUNT_MAP_STATS "count_stats"

/* Class indices: the order is the ABI, names live in moat-abi::count::CLASS_NAMES. */
#define COUNT_CLASS_IPV4_TCP   0
#define COUNT_CLASS_IPV4_UDP   1
#define COUNT_CLASS_IPV4_ICMP  2
#define COUNT_CLASS_IPV4_OTHER 3
#define COUNT_CLASS_IPV6_TCP   4
#define COUNT_CLASS_IPV6_UDP   5
#define COUNT_CLASS_IPV6_ICMP  6
#define COUNT_CLASS_IPV6_OTHER 7
#define COUNT_CLASS_ARP        8
#define COUNT_CLASS_OTHER      9
#define COUNT_CLASS_VLAN_TOO_DEEP  10 /* more tags than MOAT_MAX_VLAN_DEPTH: contents unknown */
#define COUNT_CLASS_MAX        11

/* Frames counted and their bytes (whole frame from the Ethernet header on). */
struct count_value {
	__u64 packets;
	__u64 bytes;
};

/* Parser limits (shared so userspace can document and test them). */
#define MOAT_MAX_VLAN_DEPTH   8 /* 802.1Q / 802.1ad tags skipped (QinQ and deeper) */
#define MOAT_MAX_IPV6_EXTHDRS 8 /* IPv6 extension headers walked */


#endif /* MOAT_ABI_COUNT_H */
