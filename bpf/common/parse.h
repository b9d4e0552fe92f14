/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * parse.h — kernel-only packet parsing helpers, included by the XDP/TC
 * programs of every family. All functions are __always_inline and bounded.
 *
 * The parser walks: Ethernet -> up to MOAT_MAX_VLAN_DEPTH 802.1Q/802.1ad tags
 * (a deeper stack is flagged vlan_deep: Linux strips VID-0 tags at any depth
 * and delivers the IP packet inside, so it is never "not IP") -> IPv4 (full header incl. options must be present) or IPv6 (fixed header
 * must be present, then up to MOAT_MAX_IPV6_EXTHDRS extension headers).
 * The reference model of the same rules is moat-core::classify (Rust); the two
 * are compared on random frames through BPF_PROG_TEST_RUN.
 */
#ifndef MOAT_PARSE_H
#define MOAT_PARSE_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>

#include "abi.h"

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* Result of parsing a frame's network layer. */
struct moat_l3 {
	__u16 eth_proto;  /* host order: innermost ethertype, 0 if the frame is a runt */
	__u8 l3_ok;       /* 1 if the IPv4/IPv6 header is complete and valid */
	__u8 l4_proto;    /* IPPROTO_* of the transport, or 255 if unknown */
	__u32 l3_off;     /* offset of the IP header from data */
	__u32 l4_off;     /* offset of the transport header (may be >= length) */
	__u8 frag_later;  /* 1 for a non-first fragment (transport header absent) */
	__u8 frag_more;   /* 1 if more fragments follow (MF set) */
	__u8 vlan_deep;   /* 1 if the tag stack goes deeper than MOAT_MAX_VLAN_DEPTH */
	__u8 pad;
	__u32 frag_id;    /* fragment identification (IPv4: 16 bits) */
};

#define MOAT_L4_UNKNOWN 255

struct vlan_hdr_moat {
	__be16 tci;
	__be16 proto;
};

static __always_inline int moat_is_vlan(__u16 proto)
{
	return proto == ETH_P_8021Q || proto == ETH_P_8021AD;
}

/* IPv6 extension headers moat steps over (RFC 8200 and the IANA list). */
static __always_inline int moat_ipv6_is_ext(__u8 nh)
{
	switch (nh) {
	case 0:   /* hop-by-hop options */
	case 43:  /* routing */
	case 44:  /* fragment */
	case 51:  /* authentication header */
	case 60:  /* destination options */
	case 135: /* mobility */
	case 139: /* HIP */
	case 140: /* shim6 */
		return 1;
	}
	return 0;
}

static __always_inline void moat_parse_ipv6(void *data, void *data_end, __u32 off,
					    struct moat_l3 *r)
{
	struct ipv6hdr *ip6 = data + off;
	__u8 nh;
	int i;

	if ((void *)(ip6 + 1) > data_end)
		return;
	if ((ip6->version) != 6)
		return;
	nh = ip6->nexthdr;
	off += sizeof(*ip6);

	for (i = 0; i < MOAT_MAX_IPV6_EXTHDRS; i++) {
		__u8 *h = data + off;
		__u32 len;

		if (!moat_ipv6_is_ext(nh)) {
			r->l3_ok = 1;
			r->l4_proto = nh;
			r->l4_off = off;
			return;
		}
		if ((void *)(h + 8) > data_end)
			return; /* truncated extension header: unknown transport */
		if (nh == 44) {
			/* fragment header: 8 bytes; offset in the upper 13 bits of bytes 2-3 */
			__u16 frag = ((__u16)h[2] << 8) | h[3];
			r->frag_more = frag & 1;
			r->frag_id = ((__u32)h[4] << 24) | ((__u32)h[5] << 16) | ((__u32)h[6] << 8) | h[7];
			if (frag & 0xFFF8) {
				r->l3_ok = 1;
				r->l4_proto = h[0];
				r->l4_off = off + 8;
				r->frag_later = 1;
				return;
			}
			len = 8;
		} else if (nh == 51) {
			len = ((__u32)h[1] + 2) * 4;
		} else {
			len = ((__u32)h[1] + 1) * 8;
		}
		nh = h[0];
		off += len;
	}
	if (!moat_ipv6_is_ext(nh)) {
		r->l3_ok = 1;
		r->l4_proto = nh;
		r->l4_off = off;
	}
	/* else: more than MOAT_MAX_IPV6_EXTHDRS headers, transport unknown */
}

static __always_inline void moat_parse_ipv4(void *data, void *data_end, __u32 off,
					    struct moat_l3 *r)
{
	struct iphdr *ip = data + off;
	__u32 hlen;

	if ((void *)(ip + 1) > data_end)
		return;
	if (ip->version != 4 || ip->ihl < 5)
		return;
	hlen = (__u32)ip->ihl * 4;
	if (data + off + hlen > data_end)
		return; /* options truncated */
	r->l3_ok = 1;
	r->l4_proto = ip->protocol;
	r->l4_off = off + hlen;
	r->frag_later = (bpf_ntohs(ip->frag_off) & 0x1FFF) != 0;
	r->frag_more = (bpf_ntohs(ip->frag_off) & 0x2000) != 0;
	r->frag_id = bpf_ntohs(ip->id);
}

/* Parse L2 and L3 of [data, data_end). Never fails: fills what it could. */
static __always_inline void moat_parse(void *data, void *data_end, struct moat_l3 *r)
{
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__u16 proto;
	int i;

	r->eth_proto = 0;
	r->l3_ok = 0;
	r->l4_proto = MOAT_L4_UNKNOWN;
	r->l3_off = 0;
	r->l4_off = 0;
	r->frag_later = 0;
	r->frag_more = 0;
	r->frag_id = 0;
	r->vlan_deep = 0;

	if ((void *)(eth + 1) > data_end)
		return;
	proto = bpf_ntohs(eth->h_proto);

	for (i = 0; i < MOAT_MAX_VLAN_DEPTH; i++) {
		struct vlan_hdr_moat *vh = data + off;

		if (!moat_is_vlan(proto))
			break;
		if ((void *)(vh + 1) > data_end)
			return; /* truncated tag: eth_proto stays 0 (class other) */
		proto = bpf_ntohs(vh->proto);
		off += sizeof(*vh);
	}
	if (moat_is_vlan(proto)) {
		/* Deeper than the parser follows. The kernel strips tags with VID 0
		 * at any depth and delivers what is inside, so such a frame may be
		 * IP: callers must not treat it as non-IP (the firewall drops it). */
		r->vlan_deep = 1;
		return;
	}

	r->eth_proto = proto;
	r->l3_off = off;
	if (proto == ETH_P_IP)
		moat_parse_ipv4(data, data_end, off, r);
	else if (proto == ETH_P_IPV6)
		moat_parse_ipv6(data, data_end, off, r);
}

#endif /* MOAT_PARSE_H */
