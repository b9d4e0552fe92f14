/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * abi.h — THE kernel/user ABI of moat.
 *
 * Included by every bpf/<family>/<family>.bpf.c. Mirrored in Rust by
 * crates/moat-abi (same names, same layout); a test without root checks the
 * mirror against the compiled objects (map key/value sizes, names present,
 * names <= 15 characters).
 *
 * Rules: fixed-width types only, explicit padding, network byte order spelled
 * in the type (__be16/__be32), no bool/bitfields/pointers/enum-typed fields.
 * Program and map names are #defines here and constants in moat-abi; the
 * kernel keeps only 15 characters of a name, so every name fits in 15.
 */
#ifndef MOAT_ABI_H
#define MOAT_ABI_H

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
#define COUNT_CLASS_MAX        10

/* Frames counted and their bytes (whole frame from the Ethernet header on). */
struct count_value {
	__u64 packets;
	__u64 bytes;
};

/* Parser limits (shared so userspace can document and test them). */
#define MOAT_MAX_VLAN_DEPTH   2 /* 802.1Q / 802.1ad tags skipped (QinQ) */
#define MOAT_MAX_IPV6_EXTHDRS 8 /* IPv6 extension headers walked */

#endif /* MOAT_ABI_H */
