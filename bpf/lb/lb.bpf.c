/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb.bpf.c — moat's L4 load balancer at XDP: lb_xdp. Services (VIP, port,
 * protocol) come compiled from moat-core::lb: a Maglev table per service
 * built in Rust, backends in a pinned array whose slots outlive a config.
 * The kernel only looks up: VIP, connection, table, backend; then rewrites
 * (NAT: destination address and port, incremental checksums; DSR: the MAC)
 * and sends the frame on by a FIB lookup. Maps and structs: bpf/common/abi.h.
 */
#include <linux/bpf.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "../common/abi.h"
#include "../common/parse.h"
#include "../common/stats.h"

#define PIN_BY_NAME 1 /* LIBBPF_PIN_BY_NAME */
#define AF_INET 2
#define AF_INET6 10
#define LB_ICMP_ECHO 8
#define LB_ICMP_ECHOREPLY 0
#define LB_ICMP6_ECHO 128
#define LB_ICMP6_ECHOREPLY 129

/* The first four bytes of an ICMP or ICMPv6 header. */
struct lb_icmp {
	__u8 type;
	__u8 code;
	__u16 csum;
};

/* Per instance (sized by the loader). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct lb_vip_key);
	__type(value, struct lb_vip);
} lb_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE); /* filled in one write */
	__type(key, __u32);
	__type(value, __u32);
} lb_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_config);
} lb_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct lb_vip_key);
	__type(value, struct lb_back);
} lb_back SEC(".maps");

/* Shared by every instance (pinned by name). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_BACKENDS);
	__uint(pinning, PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct lb_backend);
} lb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_SERVICES);
	__uint(pinning, PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct lb_svc);
} lb_svcs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(pinning, PIN_BY_NAME);
	__type(key, struct lb_ct_key);
	__type(value, struct lb_ct_val);
} lb_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__uint(pinning, PIN_BY_NAME);
	__type(key, struct lb_rev_key);
	__type(value, struct lb_rev_val);
} lb_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_STAT_MAX);
	__uint(pinning, PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct count_value);
} lb_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_BACKENDS);
	__uint(pinning, PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct lb_bcount);
} lb_bstats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_SERVICES);
	__uint(pinning, PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct count_value);
} lb_sstats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_IF_SLOTS);
	__uint(pinning, PIN_BY_NAME);
	__type(key, __u32);
	__type(value, __u32);
} lb_ifaces SEC(".maps");

/* The flow hash: the fields a service hashes on, the rest zero, as ten
 * native-endian words; mirrored by moat-core::lb::hash::flow_hash. */
struct lb_hash_in {
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

static __always_inline __u32 lb_flow_hash(const struct lb_hash_in *in)
{
	const __u32 *w = (const __u32 *)in;
	__u32 h = 0x9e3779b9;
	int i;

#pragma unroll
	for (i = 0; i < 10; i++) {
		h ^= w[i];
		h *= 0x85ebca6b;
		h ^= h >> 13;
	}
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* One's-complement checksum update (RFC 1624) over n 16-bit words that
 * changed from `from` to `to`, both in packet byte order. */
static __always_inline __u16 lb_csum_update(__u16 sum, const __u16 *from, const __u16 *to, int n)
{
	__u32 c = (__u16)~sum;
	int i;

#pragma unroll
	for (i = 0; i < 8; i++) {
		if (i < n) {
			c += (__u16)~from[i];
			c += to[i];
		}
	}
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)~c;
}

struct lb_pkt {
	__u8 family;
	__u8 proto;
	__u8 tcp_flags;
	__u8 pad;
	__u32 l3_off;
	__u32 l4_off;
	__u32 len;
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
};

/* An address as a global function argument (the verifier sizes a pointer
 * argument by its type). */
struct lb_addr {
	__u8 a[16];
};

static __always_inline void lb_copy16(__u8 *d, const __u8 *s)
{
	__builtin_memcpy(d, s, 16);
}

/* Rewrites one address (4 or 16 bytes at `a`) and one port of the packet,
 * updating the IPv4 header checksum and the L4 checksum. `which` 0 = the
 * destination, 1 = the source. */
__noinline int lb_rewrite(struct xdp_md *ctx, struct lb_pkt *p, int which,
			  const struct lb_addr *to, __u32 port_be)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__be16 port = (__be16)port_be;
	const __u8 *addr;
	__u32 l3, l4;
	__u16 *csum = 0;
	__be16 *pp;

	if (!p || !to)
		return -1;
	addr = to->a;
	l3 = p->l3_off & 0xff;
	l4 = p->l4_off & 0x1ff;

	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *t = data + l4;

		if ((void *)(t + 1) > data_end)
			return -1;
		csum = (__u16 *)&t->check;
		pp = which ? &t->source : &t->dest;
	} else {
		struct udphdr *u = data + l4;

		if ((void *)(u + 1) > data_end)
			return -1;
		if (u->check || p->family == 6)
			csum = (__u16 *)&u->check;
		pp = which ? &u->source : &u->dest;
	}
	if (p->family == 4) {
		struct iphdr *ip = data + l3;
		__u16 oldw[2], neww[2];
		__be32 *a;

		if ((void *)(ip + 1) > data_end)
			return -1;
		a = which ? &ip->saddr : &ip->daddr;
		__builtin_memcpy(oldw, a, 4);
		__builtin_memcpy(neww, addr, 4);
		ip->check = lb_csum_update(ip->check, oldw, neww, 2);
		if (csum)
			*csum = lb_csum_update(*csum, oldw, neww, 2);
		__builtin_memcpy(a, addr, 4);
	} else {
		struct ipv6hdr *ip6 = data + l3;
		__u16 oldw[8], neww[8];
		__u8 *a;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		a = which ? (__u8 *)&ip6->saddr : (__u8 *)&ip6->daddr;
		__builtin_memcpy(oldw, a, 16);
		__builtin_memcpy(neww, addr, 16);
		if (csum)
			*csum = lb_csum_update(*csum, oldw, neww, 8);
		__builtin_memcpy(a, addr, 16);
	}
	if (port && port != *pp) {
		__u16 o = *pp, n = port;

		if (csum)
			*csum = lb_csum_update(*csum, &o, &n, 1);
		*pp = port;
	}
	/* UDP: a computed 0 is sent as all ones (RFC 768). */
	if (csum && p->proto == IPPROTO_UDP && *csum == 0)
		*csum = 0xffff;
	return 0;
}

/* Sends the frame on toward `to` (the next hop's address): MACs from the
 * FIB and its neighbour table. NAT frames also lose one TTL / hop. */
__noinline int lb_forward(struct xdp_md *ctx, struct lb_pkt *p, const struct lb_addr *to_a, int ttl)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct bpf_fib_lookup f = {};
	struct ethhdr *eth = data;
	const __u8 *to;
	__u32 l3;
	long rc;

	if (!p || !to_a)
		return XDP_DROP;
	to = to_a->a;
	l3 = p->l3_off & 0xff;

	f.ifindex = ctx->ingress_ifindex;
	f.l4_protocol = p->proto;
	f.sport = p->sport;
	f.dport = p->dport;
	if (p->family == 4) {
		struct iphdr *ip = data + l3;

		if ((void *)(ip + 1) > data_end)
			return XDP_DROP;
		f.family = AF_INET;
		f.tos = ip->tos;
		f.tot_len = bpf_ntohs(ip->tot_len);
		f.ipv4_src = ip->saddr;
		__builtin_memcpy(&f.ipv4_dst, to, 4);
		if (ttl && ip->ttl <= 1)
			return XDP_PASS; /* the kernel answers time exceeded */
	} else {
		struct ipv6hdr *ip6 = data + l3;

		if ((void *)(ip6 + 1) > data_end)
			return XDP_DROP;
		f.family = AF_INET6;
		f.tot_len = bpf_ntohs(ip6->payload_len);
		__builtin_memcpy(f.ipv6_src, &ip6->saddr, 16);
		__builtin_memcpy(f.ipv6_dst, to, 16);
		if (ttl && ip6->hop_limit <= 1)
			return XDP_PASS;
	}
	rc = bpf_fib_lookup(ctx, &f, sizeof(f), 0);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		if (!ttl) {
			moat_count_add(&lb_stats, LB_STAT_DROP_NO_ROUTE, p->len);
			return XDP_DROP;
		}
		moat_count_add(&lb_stats, LB_STAT_OUT_KERNEL, p->len);
		return XDP_PASS;
	}
	if (ttl) {
		if (p->family == 4) {
			struct iphdr *ip = data + l3;
			__u16 o, n;

			if ((void *)(ip + 1) > data_end)
				return XDP_DROP;
			__builtin_memcpy(&o, &ip->ttl, 2); /* ttl and protocol */
			ip->ttl--;
			__builtin_memcpy(&n, &ip->ttl, 2);
			ip->check = lb_csum_update(ip->check, &o, &n, 1);
		} else {
			struct ipv6hdr *ip6 = data + l3;

			if ((void *)(ip6 + 1) > data_end)
				return XDP_DROP;
			ip6->hop_limit--;
		}
	}
	__builtin_memcpy(eth->h_dest, f.dmac, 6);
	__builtin_memcpy(eth->h_source, f.smac, 6);
	if (f.ifindex == ctx->ingress_ifindex) {
		moat_count_add(&lb_stats, LB_STAT_OUT_TX, p->len);
		return XDP_TX;
	}
	moat_count_add(&lb_stats, LB_STAT_OUT_REDIRECT, p->len);
	return bpf_redirect(f.ifindex, 0);
}

/* ICMP / ICMPv6 echo request to a VIP: answered from here. */
static __always_inline int lb_echo(void *data, void *data_end, struct lb_pkt *p)
{
	struct ethhdr *eth = data;
	__u32 l3 = p->l3_off & 0xff;
	__u32 l4 = p->l4_off & 0x1ff;
	__u8 mac[6];
	__u16 o, n;

	if ((void *)(eth + 1) > data_end)
		return -1;
	if (p->family == 4) {
		struct iphdr *ip = data + l3;
		struct lb_icmp *ic = data + l4;
		__be32 a;

		if ((void *)(ip + 1) > data_end || (void *)(ic + 1) > data_end)
			return -1;
		if (ic->type != LB_ICMP_ECHO || ic->code != 0)
			return -1;
		__builtin_memcpy(&o, ic, 2);
		ic->type = LB_ICMP_ECHOREPLY;
		__builtin_memcpy(&n, ic, 2);
		ic->csum = lb_csum_update(ic->csum, &o, &n, 1);
		a = ip->saddr;
		ip->saddr = ip->daddr;
		ip->daddr = a;
	} else {
		struct ipv6hdr *ip6 = data + l3;
		struct lb_icmp *ic = data + l4;
		struct in6_addr a;

		if ((void *)(ip6 + 1) > data_end || (void *)(ic + 1) > data_end)
			return -1;
		if (ic->type != LB_ICMP6_ECHO || ic->code != 0)
			return -1;
		__builtin_memcpy(&o, ic, 2);
		ic->type = LB_ICMP6_ECHOREPLY;
		__builtin_memcpy(&n, ic, 2);
		ic->csum = lb_csum_update(ic->csum, &o, &n, 1);
		a = ip6->saddr;
		ip6->saddr = ip6->daddr;
		ip6->daddr = a;
	}
	__builtin_memcpy(mac, eth->h_dest, 6);
	__builtin_memcpy(eth->h_dest, eth->h_source, 6);
	__builtin_memcpy(eth->h_source, mac, 6);
	return 0;
}

static __always_inline int lb_backend_ok(const struct lb_backend *b, __u32 svc)
{
	return b && b->state != LB_B_EMPTY && b->svc == svc;
}

/* The backend of a tracked connection, if it still exists. */
static __always_inline const struct lb_backend *lb_tracked(struct lb_ct_val *ct, __u32 svc)
{
	__u32 slot = ct->slot;
	const struct lb_backend *b = bpf_map_lookup_elem(&lb_backends, &slot);

	if (!lb_backend_ok(b, svc) || b->port != ct->bport)
		return 0;
	if (b->state == LB_B_DOWN && (b->flags & LB_BF_RESET_DOWN))
		return 0;
	{
		const __u32 *x = (const __u32 *)b->addr, *y = (const __u32 *)ct->backend;

		if ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]))
			return 0;
	}
	return b;
}

/* The Maglev pick for a new connection: a backend slot or LB_NONE. */
__noinline __u32 lb_pick(struct lb_pkt *p, const struct lb_vip *vip, __u32 table_size)
{
	struct lb_hash_in h = {};
	__u32 idx, *e;

	if (!p || !vip || !table_size)
		return LB_NONE;
	if (vip->hash & LB_HASH_SRC)
		lb_copy16(h.src, p->src);
	if (vip->hash & LB_HASH_DST)
		lb_copy16(h.dst, p->dst);
	if (vip->hash & LB_HASH_SPORT)
		h.sport = p->sport;
	if (vip->hash & LB_HASH_DPORT)
		h.dport = p->dport;
	if (vip->hash & LB_HASH_PROTO)
		h.proto = p->proto;
	idx = vip->table_off + lb_flow_hash(&h) % table_size;
	e = bpf_map_lookup_elem(&lb_maglev, &idx);
	return e ? *e : LB_NONE;
}

/* NAT: remembers the backend's side of a connection for its replies (again
 * when the LRU evicted it while the connection lives). */
__noinline int lb_note_reply(struct lb_pkt *p, const struct lb_addr *b, __u32 bport, int fresh)
{
	struct lb_rev_key rk = {};
	struct lb_rev_val rv = {};

	if (!p || !b)
		return 0;
	lb_copy16(rk.backend, b->a);
	lb_copy16(rk.client, p->src);
	rk.bport = (__be16)bport;
	rk.cport = p->sport;
	rk.proto = p->proto;
	rk.family = p->family;
	if (!fresh && bpf_map_lookup_elem(&lb_rev, &rk))
		return 0;
	lb_copy16(rv.vip, p->dst);
	rv.vport = p->dport;
	return bpf_map_update_elem(&lb_rev, &rk, &rv, BPF_ANY);
}

__noinline int lb_service(struct xdp_md *ctx, struct lb_pkt *p, const struct lb_vip *vip)
{
	struct lb_ct_key ck = {};
	struct lb_ct_val *ct, nv = {};
	const struct lb_backend *b = 0;
	const struct lb_config *cfg;
	struct lb_bcount *bc;
	struct lb_addr baddr;
	__u64 now = bpf_ktime_get_ns();
	__u32 slot = LB_NONE, svc, zero = 0;
	__be16 bport;
	int fresh = 0;

	if (!p || !vip)
		return XDP_DROP;
	cfg = bpf_map_lookup_elem(&lb_config, &zero);
	if (!cfg)
		return XDP_PASS;
	svc = vip->svc;

	lb_copy16(ck.client, p->src);
	lb_copy16(ck.vip, p->dst);
	ck.cport = p->sport;
	ck.vport = p->dport;
	ck.proto = p->proto;
	ck.family = p->family;

	ct = bpf_map_lookup_elem(&lb_ct, &ck);
	if (ct) {
		__u64 idle = p->proto == IPPROTO_TCP ? cfg->tcp_idle_ns : cfg->udp_idle_ns;

		if (ct->closing && idle > LB_CLOSING_SECS * 1000000000ULL)
			idle = LB_CLOSING_SECS * 1000000000ULL;
		int syn_again = p->proto == IPPROTO_TCP && ct->closing &&
				(p->tcp_flags & 0x12) == 0x02;

		if (now - ct->last_ns <= idle && !syn_again)
			b = lb_tracked(ct, svc);
		if (b) {
			slot = ct->slot;
			ct->last_ns = now;
			if (p->tcp_flags & 0x05) /* FIN or RST */
				ct->closing = 1;
		} else {
			moat_count_add(&lb_stats, LB_STAT_RESELECT, p->len);
		}
	}
	if (!b) {
		slot = lb_pick(p, vip, cfg->table_size);
		if (slot == LB_NONE)
			goto none;
		b = bpf_map_lookup_elem(&lb_backends, &slot);
		if (!lb_backend_ok(b, svc))
			goto none;
		lb_copy16(nv.backend, b->addr);
		nv.bport = b->port;
		nv.slot = slot;
		nv.svc = svc;
		nv.last_ns = now;
		nv.closing = (p->tcp_flags & 0x05) != 0;
		bpf_map_update_elem(&lb_ct, &ck, &nv, BPF_ANY);
		fresh = 1;
	}
	moat_count_add(&lb_stats, fresh ? LB_STAT_NEW : LB_STAT_TRACKED, p->len);
	bc = bpf_map_lookup_elem(&lb_bstats, &slot);
	if (bc) {
		bc->packets += 1;
		bc->bytes += p->len;
		bc->conns += fresh;
	}
	moat_count_add(&lb_sstats, svc, p->len);

	bport = b->port ? b->port : p->dport;
	lb_copy16(baddr.a, b->addr);
	if (vip->mode == LB_MODE_DSR)
		return lb_forward(ctx, p, &baddr, 0);

	/* NAT: a backend whose replies lb_back cannot place keeps the
	 * connection's backend side in lb_rev. */
	if (b->flags & LB_BF_REV)
		lb_note_reply(p, &baddr, bport, fresh);
	if (lb_rewrite(ctx, p, 0, &baddr, bport) < 0) {
		moat_count_add(&lb_stats, LB_STAT_DROP_MALFORMED, p->len);
		return XDP_DROP;
	}
	return lb_forward(ctx, p, &baddr, 1);
none:
	moat_count_add(&lb_stats, LB_STAT_DROP_NO_BACKEND, p->len);
	moat_count_add(&lb_sstats, svc, p->len);
	return XDP_DROP;
}

/* A NAT backend's reply: the VIP it answers for from lb_back, confirmed by
 * the connection in lb_ct (or, for a backend lb_back cannot place, lb_rev);
 * the source becomes the VIP and the frame goes to the client. Returns the
 * XDP verdict, or -1 if this is not a reply. */
__noinline int lb_reply(struct xdp_md *ctx, struct lb_pkt *p)
{
	struct lb_vip_key bk = {};
	struct lb_addr vip_a, client;
	const struct lb_back *bv;
	__be16 vport;

	if (!p)
		return -1;
	lb_copy16(bk.addr, p->src);
	bk.port = p->sport;
	bk.proto = p->proto;
	bk.family = p->family;
	bv = bpf_map_lookup_elem(&lb_back, &bk);
	if (!bv) {
		bk.port = 0;
		bv = bpf_map_lookup_elem(&lb_back, &bk);
	}
	if (!bv)
		return -1;
	if (!(bv->flags & LB_BACK_AMBIG)) {
		struct lb_ct_key ck = {};
		struct lb_ct_val *ct;

		vport = bv->vport ? bv->vport : p->sport;
		lb_copy16(ck.client, p->dst);
		lb_copy16(ck.vip, bv->vip);
		ck.cport = p->dport;
		ck.vport = vport;
		ck.proto = p->proto;
		ck.family = p->family;
		ct = bpf_map_lookup_elem(&lb_ct, &ck);
		if (!ct)
			return -1;
		{
			const __u32 *x = (const __u32 *)ct->backend, *y = (const __u32 *)p->src;

			if ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]))
				return -1;
		}
		lb_copy16(vip_a.a, bv->vip);
	} else {
		struct lb_rev_key rk = {};
		struct lb_rev_val *rv;

		lb_copy16(rk.backend, p->src);
		lb_copy16(rk.client, p->dst);
		rk.bport = p->sport;
		rk.cport = p->dport;
		rk.proto = p->proto;
		rk.family = p->family;
		rv = bpf_map_lookup_elem(&lb_rev, &rk);
		if (!rv)
			return -1;
		vport = rv->vport;
		lb_copy16(vip_a.a, rv->vip);
	}
	lb_copy16(client.a, p->dst);
	if (lb_rewrite(ctx, p, 1, &vip_a, vport) < 0)
		return XDP_PASS;
	moat_count_add(&lb_stats, LB_STAT_REPLY, p->len);
	return lb_forward(ctx, p, &client, 1);
}

/* Rewrites an ICMP error's outer address (`outer`: 0 destination, 1 source,
 * -1 none) and its quoted packet's address and port (`inner`: 0 destination,
 * 1 source) to `to`/`port`, keeping the outer IPv4 header, the quoted IPv4
 * header and the ICMP checksums right (ICMPv6's covers the outer addresses
 * too). The quoted transport checksum is left alone (often not quoted
 * whole; receivers do not check it). */
#define LB_HOW(outer, inner, port) ((__u32)((outer) + 1) | ((__u32)(inner) << 2) | ((__u32)(port) << 16))

/* `how` = LB_HOW(outer, inner, port), `offs` = quoted IP header offset |
 * quoted transport header offset << 16 (BPF functions take five arguments). */
__noinline int lb_icmp_rewrite(struct xdp_md *ctx, struct lb_pkt *p, const struct lb_addr *to,
			       __u32 how, __u32 offs)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int outer = (int)(how & 3) - 1, inner = (how >> 2) & 1;
	__be16 port = (__be16)(how >> 16);
	__u32 l3, l4, in3 = offs & 0xffff, in4 = offs >> 16;
	struct lb_icmp *ic;
	__u16 *pp;

	if (!p || !to)
		return -1;
	l3 = p->l3_off & 0xff;
	l4 = p->l4_off & 0x1ff;
	in3 &= 0x3ff;
	in4 &= 0x3ff;
	ic = data + l4;
	if ((void *)(ic + 1) > data_end)
		return -1;
	if (p->family == 4) {
		struct iphdr *ip = data + l3;
		struct iphdr *iip = data + in3;
		__u16 o[2], n[2], oc, nc;

		if ((void *)(ip + 1) > data_end || (void *)(iip + 1) > data_end)
			return -1;
		__builtin_memcpy(n, to->a, 4);
		if (outer >= 0) {
			__be32 *a = outer ? &ip->saddr : &ip->daddr;

			__builtin_memcpy(o, a, 4);
			ip->check = lb_csum_update(ip->check, o, n, 2);
			__builtin_memcpy(a, to->a, 4);
		}
		{
			__be32 *a = inner ? &iip->saddr : &iip->daddr;

			__builtin_memcpy(o, a, 4);
			oc = iip->check;
			iip->check = lb_csum_update(iip->check, o, n, 2);
			nc = iip->check;
			__builtin_memcpy(a, to->a, 4);
			ic->csum = lb_csum_update(ic->csum, o, n, 2);
			ic->csum = lb_csum_update(ic->csum, &oc, &nc, 1);
		}
	} else {
		struct ipv6hdr *ip6 = data + l3;
		struct ipv6hdr *iip6 = data + in3;
		__u16 o[8], n[8];

		if ((void *)(ip6 + 1) > data_end || (void *)(iip6 + 1) > data_end)
			return -1;
		__builtin_memcpy(n, to->a, 16);
		if (outer >= 0) {
			__u8 *a = outer ? (__u8 *)&ip6->saddr : (__u8 *)&ip6->daddr;

			__builtin_memcpy(o, a, 16);
			ic->csum = lb_csum_update(ic->csum, o, n, 8); /* pseudo-header */
			__builtin_memcpy(a, to->a, 16);
		}
		{
			__u8 *a = inner ? (__u8 *)&iip6->saddr : (__u8 *)&iip6->daddr;

			__builtin_memcpy(o, a, 16);
			ic->csum = lb_csum_update(ic->csum, o, n, 8);
			__builtin_memcpy(a, to->a, 16);
		}
	}
	pp = data + in4 + (inner ? 0 : 2);
	if ((void *)(pp + 1) > data_end)
		return -1;
	if (port && *pp != port) {
		__u16 o = *pp, n = port;

		ic->csum = lb_csum_update(ic->csum, &o, &n, 1);
		*pp = port;
	}
	return 0;
}

/* An ICMP error about a balanced connection goes where its quoted packet
 * came from: an error about what the VIP sent (quoted source = the VIP) to
 * the connection's backend (NAT: quoted source and outer destination become
 * the backend); an error a NAT backend's side sends about what it got
 * (quoted destination = the backend) to the client, with the VIP in place
 * of the backend. Returns the verdict, or -1 if it is not about a balanced
 * connection. */
__noinline int lb_icmp_error(struct xdp_md *ctx, struct lb_pkt *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct lb_pkt in = {};
	struct lb_vip_key vk = {};
	struct lb_ct_key ck = {};
	struct lb_ct_val *ct;
	const struct lb_vip *vip;
	const struct lb_backend *b;
	struct lb_addr to;
	__u32 l4, in3, in4;
	__u8 type, *h;

	if (!p)
		return -1;
	l4 = p->l4_off & 0x1ff;
	h = data + l4;
	if ((void *)(h + 8) > data_end)
		return -1;
	type = h[0];
	if (p->family == 4 ? (type != 3 && type != 11 && type != 12) : (type < 1 || type > 4))
		return -1;
	in3 = l4 + 8;
	in.family = p->family;
	if (p->family == 4) {
		struct iphdr *iip = data + (in3 & 0x3ff);

		if ((void *)(iip + 1) > data_end || iip->version != 4 || iip->ihl < 5)
			return -1;
		in4 = in3 + (__u32)iip->ihl * 4;
		in.proto = iip->protocol;
		__builtin_memcpy(in.src, &iip->saddr, 4);
		__builtin_memcpy(in.dst, &iip->daddr, 4);
	} else {
		struct ipv6hdr *iip6 = data + (in3 & 0x3ff);

		if ((void *)(iip6 + 1) > data_end)
			return -1;
		in4 = in3 + 40;
		in.proto = iip6->nexthdr;
		lb_copy16(in.src, (__u8 *)&iip6->saddr);
		lb_copy16(in.dst, (__u8 *)&iip6->daddr);
	}
	if (in.proto != IPPROTO_TCP && in.proto != IPPROTO_UDP)
		return -1;
	{
		__be16 *ports = data + (in4 & 0x3ff);

		if ((void *)(ports + 2) > data_end)
			return -1;
		in.sport = ports[0];
		in.dport = ports[1];
	}

	/* About what the VIP sent: to the backend. */
	lb_copy16(vk.addr, in.src);
	vk.port = in.sport;
	vk.proto = in.proto;
	vk.family = in.family;
	vip = bpf_map_lookup_elem(&lb_vips, &vk);
	if (!vip) {
		vk.port = 0;
		vip = bpf_map_lookup_elem(&lb_vips, &vk);
	}
	if (vip && !(vip->flags & LB_VIP_ECHO)) {
		lb_copy16(ck.client, in.dst);
		lb_copy16(ck.vip, in.src);
		ck.cport = in.dport;
		ck.vport = in.sport;
		ck.proto = in.proto;
		ck.family = in.family;
		ct = bpf_map_lookup_elem(&lb_ct, &ck);
		if (!ct)
			return -1;
		b = lb_tracked(ct, vip->svc);
		if (!b)
			return -1;
		lb_copy16(to.a, b->addr);
		moat_count_add(&lb_stats, LB_STAT_ICMP_ERROR, p->len);
		if (vip->mode == LB_MODE_DSR)
			return lb_forward(ctx, p, &to, 0);
		if (lb_icmp_rewrite(ctx, p, &to, LB_HOW(0, 1, b->port ? b->port : in.sport),
				    in3 | in4 << 16) < 0)
			return XDP_DROP;
		return lb_forward(ctx, p, &to, 1);
	}

	/* About what a NAT backend got: to the client, from the VIP. */
	{
		const struct lb_back *bv;
		__be16 vport;
		int outer;

		lb_copy16(vk.addr, in.dst);
		vk.port = in.dport;
		bv = bpf_map_lookup_elem(&lb_back, &vk);
		if (!bv) {
			vk.port = 0;
			bv = bpf_map_lookup_elem(&lb_back, &vk);
		}
		if (!bv || (bv->flags & LB_BACK_AMBIG))
			return -1;
		vport = bv->vport ? bv->vport : in.dport;
		lb_copy16(ck.client, in.src);
		lb_copy16(ck.vip, bv->vip);
		ck.cport = in.sport;
		ck.vport = vport;
		ck.proto = in.proto;
		ck.family = in.family;
		ct = bpf_map_lookup_elem(&lb_ct, &ck);
		if (!ct)
			return -1;
		{
			const __u32 *x = (const __u32 *)ct->backend, *y = (const __u32 *)in.dst;

			if ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]))
				return -1;
		}
		/* Sent by the backend itself: it must look sent by the VIP. */
		{
			const __u32 *x = (const __u32 *)p->src, *y = (const __u32 *)in.dst;

			outer = ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) ? -1 : 1;
		}
		lb_copy16(to.a, bv->vip);
		if (lb_icmp_rewrite(ctx, p, &to, LB_HOW(outer, 0, vport), in3 | in4 << 16) < 0)
			return XDP_DROP;
		moat_count_add(&lb_stats, LB_STAT_ICMP_ERROR, p->len);
		lb_copy16(to.a, in.src);
		return lb_forward(ctx, p, &to, 1);
	}
}

/* Everything after parsing, for one packet. Global: verified once, apart
 * from the parser's paths. */
__noinline int lb_core(struct xdp_md *ctx, struct lb_pkt *p, __u32 frag)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	const struct lb_vip *vip;
	struct lb_vip_key vk = {};

	if (!p)
		return XDP_PASS;
	lb_copy16(vk.addr, p->dst);
	vk.proto = p->proto;
	vk.family = p->family;

	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) {
		void *l4 = data + (p->l4_off & 0x1ff);
		int truncated;

		if (p->proto == IPPROTO_TCP) {
			struct tcphdr *t = l4;

			truncated = (void *)(t + 1) > data_end;
			if (!truncated) {
				p->sport = t->source;
				p->dport = t->dest;
				p->tcp_flags = ((__u8 *)t)[13];
			}
		} else {
			struct udphdr *u = l4;

			truncated = (void *)(u + 1) > data_end;
			if (!truncated) {
				p->sport = u->source;
				p->dport = u->dest;
			}
		}
		if (frag || truncated) {
			/* Is it for a VIP at all? Any VIP has its echo entry. */
			vk.port = 0;
			vk.proto = p->family == 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6;
			if (!bpf_map_lookup_elem(&lb_vips, &vk))
				return XDP_PASS;
			moat_count_add(&lb_stats,
				       truncated && !(frag & 2) ? LB_STAT_DROP_MALFORMED
								: LB_STAT_DROP_FRAGMENT,
				       p->len);
			return XDP_DROP;
		}
		vk.port = p->dport;
		vip = bpf_map_lookup_elem(&lb_vips, &vk);
		if (!vip) {
			vk.port = 0;
			vip = bpf_map_lookup_elem(&lb_vips, &vk);
		}
		if (vip && !(vip->flags & LB_VIP_ECHO))
			return lb_service(ctx, p, vip);

		/* A NAT backend's reply? */
		{
			int r = lb_reply(ctx, p);

			if (r >= 0)
				return r;
		}
		/* To a VIP address, but no service on this port or protocol. */
		vk.proto = p->family == 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6;
		vk.port = 0;
		if (bpf_map_lookup_elem(&lb_vips, &vk)) {
			moat_count_add(&lb_stats, LB_STAT_DROP_PROTO, p->len);
			return XDP_DROP;
		}
		moat_count_add(&lb_stats, LB_STAT_PASS, p->len);
		return XDP_PASS;
	}
	if ((p->family == 4 && p->proto == IPPROTO_ICMP) ||
	    (p->family == 6 && p->proto == IPPROTO_ICMPV6)) {
		vk.port = 0;
		vip = bpf_map_lookup_elem(&lb_vips, &vk);
		if (vip && (vip->flags & LB_VIP_ECHO)) {
			if (!frag && lb_echo(data, data_end, p) == 0) {
				moat_count_add(&lb_stats, LB_STAT_ECHO, p->len);
				moat_count_add(&lb_stats, LB_STAT_OUT_TX, p->len);
				return XDP_TX;
			}
		}
		/* An error about a balanced connection goes by its inner flow;
		 * other ICMP (NDP, errors about anything else) is the kernel's. */
		{
			int r = lb_icmp_error(ctx, p);

			if (r >= 0)
				return r;
		}
	}
	moat_count_add(&lb_stats, LB_STAT_PASS, p->len);
	return XDP_PASS;
}

SEC("xdp")
int lb_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct lb_pkt p = {};
	struct moat_l3 r;
	__u32 ifslot = ctx->ingress_ifindex & (LB_IF_SLOTS - 1), *ifv;

	/* Only where the balancer runs (behind the firewall it is called on
	 * every firewall interface). */
	ifv = bpf_map_lookup_elem(&lb_ifaces, &ifslot);
	if (!ifv || *ifv != ctx->ingress_ifindex)
		return XDP_PASS;
	p.len = data_end - data;
	moat_parse(data, data_end, &r);
	if (!r.l3_ok || r.l3_off > 0xff || r.l4_off > 0x1ff)
		return XDP_PASS;
	p.l3_off = r.l3_off;
	p.l4_off = r.l4_off;
	p.proto = r.l4_proto;
	if (r.eth_proto == ETH_P_IP) {
		struct iphdr *ip = data + (r.l3_off & 0xff);

		if ((void *)(ip + 1) > data_end)
			return XDP_PASS;
		p.family = 4;
		__builtin_memcpy(p.src, &ip->saddr, 4);
		__builtin_memcpy(p.dst, &ip->daddr, 4);
	} else {
		struct ipv6hdr *ip6 = data + (r.l3_off & 0xff);

		if ((void *)(ip6 + 1) > data_end)
			return XDP_PASS;
		p.family = 6;
		lb_copy16(p.src, (__u8 *)&ip6->saddr);
		lb_copy16(p.dst, (__u8 *)&ip6->daddr);
	}
	return lb_core(ctx, &p, (r.frag_more ? 1 : 0) | (r.frag_later ? 2 : 0));
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
