// SPDX-License-Identifier: GPL-2.0
/* hop's backend shim: two tc (clsact, direct-action) programs on a backend's interface that
 * share one LRU map of hopped connections. Built by setup.py (clang -target bpf), loaded by
 * modes/hop/shim.py (bpftool prog loadall + tc filter ... bpf object-pinned), held to its
 * Python reference model (modes/hop/shim_model.py) by tests/unit/test_hop_shim.py with
 * BPF_PROG_TEST_RUN on fixture frames.
 *
 * The life of a hopped connection, seen from the backend (the LB is threeway in hop mode):
 *   ingress SYN with the hop mark   -> flow recorded PENDING, the LB's MAC taken from the
 *                                      frame's source; the option is NOPed (checksum fixed)
 *   egress, PENDING                 -> to the LB's MAC (the SYN-ACK, a RST, a TIME_WAIT's
 *                                      ACK): the LB answers it; nothing translated
 *   ingress with the hand-off option-> delta, ts_off, ws_b, ws_lb stored, flow ACTIVE; the
 *                                      option is NOPed; that segment is the LB's own and
 *                                      already in the backend's space: not translated
 *   ingress, PENDING, no hand-off   -> dropped (counted): it cannot be translated yet, and
 *                                      the client resends it; a RST (the LB's, ending a
 *                                      TIME_WAIT before its SYN again) passes, entry deleted
 *   ingress, ACTIVE                 -> ack -= delta, SACK blocks -= delta, TSecr -= ts_off
 *   egress, ACTIVE                  -> seq += delta, TSval += ts_off, window rescaled from
 *                                      ws_b to ws_lb; the frame leaves as the kernel routed
 *                                      it (to the client, through the backend's gateway)
 *   RST either way: entry deleted; FIN both ways: HOP_CLOSING_S left; idle: HOP_IDLE_S
 *   (PENDING: HOP_PENDING_S), checked on the next packet; the LRU evicts the rest.
 *
 * Invariants:
 * - Key and addresses in network byte order as in the frame; delta/ts_off host order.
 * - Every rewrite is made on a copy of the TCP header and written back whole; the checksum
 *   moves by bpf_csum_diff of the two copies (RFC 1624 by the kernel; a CHECKSUM_PARTIAL
 *   skb, e.g. a TSO superframe, keeps its pseudo-header sum, as it must).
 * - Anything that is not IPv4/TCP, a fragment, or a header that does not parse is passed
 *   untouched (TC_ACT_OK); only a PENDING flow's client segment is ever dropped.
 * - Every outcome bumps one slot of hop_stats (SHIM_STATS in shim_model.py, same order).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* setup.py passes these from fastpath/defs.py; the defaults only keep the file readable */
#ifndef HOP_OPT_KIND
#define HOP_OPT_KIND 253
#endif
#ifndef HOP_EXID
#define HOP_EXID 0x7477
#endif
#ifndef HOP_MARK_LEN
#define HOP_MARK_LEN 4
#endif
#ifndef HOP_HANDOFF_LEN
#define HOP_HANDOFF_LEN 14
#endif
#ifndef HOP_SHIM_FLOWS
#define HOP_SHIM_FLOWS 65536
#endif
#ifndef HOP_PENDING_S
#define HOP_PENDING_S 10
#endif
#ifndef HOP_IDLE_S
#define HOP_IDLE_S 900
#endif
#ifndef HOP_CLOSING_S
#define HOP_CLOSING_S 60
#endif

#define ST_PENDING 1
#define ST_ACTIVE 2
#define FL_FIN_IN 1
#define FL_FIN_OUT 2

/* hop_stats slots (shim_model.SHIM_STATS) */
enum {
	S_IN_MARKED,        /* SYN with the hop mark: flow recorded PENDING */
	S_IN_HANDOFF,       /* hand-off option: flow ACTIVE */
	S_IN_XLATE,         /* client segment translated into the backend's space */
	S_IN_DROP_PENDING,  /* client segment of a PENDING flow: dropped */
	S_IN_SYN_CLEARED,   /* SYN without the mark on a recorded 4-tuple: the entry deleted */
	S_OUT_TO_LB,        /* egress of a PENDING flow sent to the LB's MAC */
	S_OUT_XLATE,        /* backend segment translated into the client's view */
	S_EXPIRED,          /* an entry found idle past its timeout: deleted */
	S_RST,              /* RST either way: entry deleted */
	S_BAD_OPTION,       /* hop option of the wrong length for its segment: ignored */
	S_N
};

struct hop_key {
	__u32 cip;
	__u32 vip;
	__u16 cport;
	__u16 vport;
};

struct hop_flow {
	__u64 last_ns;      /* bpf_ktime_get_ns() of the latest segment either way */
	__u32 delta;        /* added to the backend's seq, taken off the client's ack and SACK */
	__u32 ts_off;       /* added to the backend's TSval, taken off the client's TSecr */
	__u8 lb_mac[6];     /* where a PENDING flow's egress goes */
	__u8 state;         /* ST_PENDING or ST_ACTIVE */
	__u8 flags;         /* FL_FIN_* */
	__u8 ws_b;          /* the backend's window scale (as its SYN-ACK said) */
	__u8 ws_lb;         /* the one the client was promised (the LB's cookie SYN-ACK) */
	__u8 pad[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, HOP_SHIM_FLOWS);
	__type(key, struct hop_key);
	__type(value, struct hop_flow);
} hop_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, S_N);
	__type(key, __u32);
	__type(value, __u64);
} hop_stats SEC(".maps");

struct seg {
	__u32 l4;           /* offset of the TCP header in the frame */
	__u32 hl;           /* its length, 20..60 */
	__u32 saddr, daddr; /* network order */
	__u16 sport, dport; /* network order */
	__u8 h[64];         /* the TCP header as it is */
	__u8 n[64];         /* the TCP header as it will be */
	int ts, sack, sack_len, hop, hop_len;   /* option offsets in the header, -1: none */
};

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&hop_stats, &slot);
	if (v)
		*v += 1;
}

static __always_inline __u32 rd32(const __u8 *b, __u32 o)
{
	return ((__u32)b[o & 63] << 24) | ((__u32)b[(o + 1) & 63] << 16)
		| ((__u32)b[(o + 2) & 63] << 8) | b[(o + 3) & 63];
}

static __always_inline void wr32(__u8 *b, __u32 o, __u32 v)
{
	b[o & 63] = v >> 24;
	b[(o + 1) & 63] = v >> 16;
	b[(o + 2) & 63] = v >> 8;
	b[(o + 3) & 63] = v;
}

/* one option of the TCP header at st->i (bpf_loop's callback: the verifier checks it once,
 * where an unrolled loop over every layout of 40 option bytes would pass its limit) */
struct scan {
	struct seg *s;
	__u32 i;
};

static long scan_one(__u64 index, void *ctx)
{
	struct scan *st = ctx;
	struct seg *s = st->s;
	__u32 i = st->i, kind, len;

	if (i >= s->hl || i >= 60)
		return 1;
	kind = s->h[i & 63];
	if (kind == 0)
		return 1;
	if (kind == 1) {
		st->i = i + 1;
		return 0;
	}
	if (i + 1 >= s->hl)
		return 1;
	len = s->h[(i + 1) & 63];
	if (len < 2 || i + len > s->hl)
		return 1;
	if (kind == 8 && len == 10 && s->ts < 0)
		s->ts = i;
	else if (kind == 5 && s->sack < 0) {
		s->sack = i;
		s->sack_len = len;
	} else if (kind == HOP_OPT_KIND && len >= 4 && s->hop < 0
		   && s->h[(i + 2) & 63] == (HOP_EXID >> 8)
		   && s->h[(i + 3) & 63] == (HOP_EXID & 0xFF)) {
		s->hop = i;
		s->hop_len = len;
	}
	st->i = i + len;
	return 0;
}

/* 0: an IPv4 TCP segment (first or only fragment, header read into s); -1: pass it */
static __always_inline int parse(struct __sk_buff *skb, struct seg *s)
{
	__u8 ip[20];
	__u16 et;
	__u32 ihl;

	if (bpf_skb_load_bytes(skb, 12, &et, 2) || et != bpf_htons(0x0800))
		return -1;
	if (bpf_skb_load_bytes(skb, 14, ip, 20))
		return -1;
	if ((ip[0] >> 4) != 4 || ip[9] != 6)
		return -1;
	if ((ip[6] & 0x3F) || ip[7])       /* MF or an offset: not a whole segment */
		return -1;
	ihl = (ip[0] & 15) * 4;
	if (ihl < 20)
		return -1;
	s->l4 = 14 + ihl;
	__builtin_memcpy(&s->saddr, ip + 12, 4);
	__builtin_memcpy(&s->daddr, ip + 16, 4);
	if (bpf_skb_load_bytes(skb, s->l4, s->h, 20))
		return -1;
	s->hl = (s->h[12] >> 4) * 4;
	if (s->hl < 20 || s->hl > 60)
		return -1;
	__builtin_memcpy(&s->sport, s->h, 2);
	__builtin_memcpy(&s->dport, s->h + 2, 2);
	return 0;
}

/* the options of the segment parse() read (only for a segment of ours: a SYN, or one whose
 * 4-tuple is in the map; every other packet of the backend pays the lookup alone).
 * 0, or -1: pass it untouched */
static __always_inline int parse_options(struct __sk_buff *skb, struct seg *s)
{
	__u64 ol = s->hl - 20;
	struct scan st;

	barrier_var(ol);        /* one register, checked and passed (the verifier needs its range) */
	if (ol > 40)
		return -1;
	if (ol > 0 && bpf_skb_load_bytes(skb, s->l4 + 20, s->h + 20, ol))
		return -1;
	s->ts = s->sack = s->hop = -1;
	s->sack_len = s->hop_len = 0;
	st.s = s;
	st.i = 20;
	bpf_loop(40, scan_one, &st, 0);
	__builtin_memcpy(s->n, s->h, 64);
	return 0;
}

static __always_inline void nop_option(struct seg *s)
{
	__u32 k;
	for (k = 0; k < 40; k++) {
		if (k >= (__u32)s->hop_len)
			break;
		s->n[(s->hop + k) & 63] = 1;
	}
}

/* the edited header back into the frame, the checksum moved by the difference */
static __always_inline void commit(struct __sk_buff *skb, struct seg *s)
{
	__u32 hl = s->hl & 60;
	__s64 diff;

	if (hl < 20)
		return;
	diff = bpf_csum_diff((__be32 *)s->h, hl, (__be32 *)s->n, hl, 0);
	if (diff < 0)
		return;
	bpf_skb_store_bytes(skb, s->l4, s->n, hl, 0);
	bpf_l4_csum_replace(skb, s->l4 + 16, 0, (__u32)diff, 0);
}

static __always_inline __u64 timeout_ns(const struct hop_flow *f)
{
	if (f->state == ST_PENDING)
		return (__u64)HOP_PENDING_S * 1000000000ULL;
	if ((f->flags & (FL_FIN_IN | FL_FIN_OUT)) == (FL_FIN_IN | FL_FIN_OUT))
		return (__u64)HOP_CLOSING_S * 1000000000ULL;
	return (__u64)HOP_IDLE_S * 1000000000ULL;
}

/* the flow of key k, or NULL (none, or expired: then deleted) */
static __always_inline struct hop_flow *find(struct hop_key *k, __u64 now)
{
	struct hop_flow *f = bpf_map_lookup_elem(&hop_flows, k);
	if (!f)
		return NULL;
	/* signed: another CPU may have stamped the entry after this program read the clock */
	if ((__s64)(now - f->last_ns) > (__s64)timeout_ns(f)) {
		bpf_map_delete_elem(&hop_flows, k);
		count(S_EXPIRED);
		return NULL;
	}
	return f;
}

SEC("tc")
int hop_ingress(struct __sk_buff *skb)
{
	struct seg s;
	struct hop_key k;
	struct hop_flow nf = {}, *f;
	__u64 now = bpf_ktime_get_ns();
	__u8 fl;
	__u32 delta, i, b;

	if (parse(skb, &s))
		return TC_ACT_OK;
	k.cip = s.saddr;
	k.vip = s.daddr;
	k.cport = s.sport;
	k.vport = s.dport;
	fl = s.h[13];
	if ((fl & 0x12) == 0x02) {                  /* a SYN: a new connection on the 4-tuple */
		if (parse_options(skb, &s))
			return TC_ACT_OK;
		if (s.hop >= 0 && s.hop_len == HOP_MARK_LEN) {
			nf.last_ns = now;
			nf.state = ST_PENDING;
			if (bpf_skb_load_bytes(skb, 6, nf.lb_mac, 6))
				return TC_ACT_OK;
			bpf_map_update_elem(&hop_flows, &k, &nf, BPF_ANY);
			nop_option(&s);
			commit(skb, &s);
			count(S_IN_MARKED);
			return TC_ACT_OK;
		}
		if (s.hop >= 0)
			count(S_BAD_OPTION);
		if (bpf_map_delete_elem(&hop_flows, &k) == 0)
			count(S_IN_SYN_CLEARED);
		return TC_ACT_OK;
	}
	f = find(&k, now);
	if (!f || parse_options(skb, &s))
		return TC_ACT_OK;
	f->last_ns = now;
	if (s.hop >= 0 && s.hop_len == HOP_HANDOFF_LEN) {
		/* the LB's ACK (+ request): in the backend's space already */
		f->delta = rd32(s.h, s.hop + 4);
		f->ts_off = rd32(s.h, s.hop + 8);
		f->ws_b = s.h[(s.hop + 12) & 63];
		f->ws_lb = s.h[(s.hop + 13) & 63];
		f->state = ST_ACTIVE;
		nop_option(&s);
		commit(skb, &s);
		count(S_IN_HANDOFF);
		return TC_ACT_OK;
	}
	if (s.hop >= 0)
		count(S_BAD_OPTION);
	if (f->state != ST_ACTIVE) {
		if (fl & 0x04) {            /* the LB ends a TIME_WAIT before its SYN again */
			bpf_map_delete_elem(&hop_flows, &k);
			count(S_RST);
			return TC_ACT_OK;
		}
		count(S_IN_DROP_PENDING);
		return TC_ACT_SHOT;
	}
	delta = f->delta;
	if (fl & 0x10)
		wr32(s.n, 8, rd32(s.h, 8) - delta);
	if (s.ts >= 0)
		wr32(s.n, s.ts + 6, rd32(s.h, s.ts + 6) - f->ts_off);
	if (s.sack >= 0) {
		for (i = 0; i < 4; i++) {
			b = s.sack + 2 + i * 8;
			if (b + 8 > (__u32)(s.sack + s.sack_len))
				break;
			wr32(s.n, b, rd32(s.h, b) - delta);
			wr32(s.n, b + 4, rd32(s.h, b + 4) - delta);
		}
	}
	if (fl & 0x04) {
		bpf_map_delete_elem(&hop_flows, &k);
		count(S_RST);
	} else if (fl & 0x01) {
		f->flags |= FL_FIN_IN;
	}
	commit(skb, &s);
	count(S_IN_XLATE);
	return TC_ACT_OK;
}

SEC("tc")
int hop_egress(struct __sk_buff *skb)
{
	struct seg s;
	struct hop_key k;
	struct hop_flow *f;
	__u64 now = bpf_ktime_get_ns();
	__u8 fl;
	__u32 w;

	if (parse(skb, &s))
		return TC_ACT_OK;
	k.cip = s.daddr;
	k.vip = s.saddr;
	k.cport = s.dport;
	k.vport = s.sport;
	f = find(&k, now);
	if (!f)
		return TC_ACT_OK;
	f->last_ns = now;
	fl = s.h[13];
	if (f->state != ST_ACTIVE) {
		bpf_skb_store_bytes(skb, 0, f->lb_mac, 6, 0);
		count(S_OUT_TO_LB);
		return TC_ACT_OK;
	}
	if (parse_options(skb, &s))
		return TC_ACT_OK;
	wr32(s.n, 4, rd32(s.h, 4) + f->delta);
	if (s.ts >= 0)
		wr32(s.n, s.ts + 2, rd32(s.h, s.ts + 2) + f->ts_off);
	if (f->ws_b != f->ws_lb && !(fl & 0x02)) {
		w = (((__u32)s.h[14] << 8) | s.h[15]) << (f->ws_b & 15);
		w >>= (f->ws_lb & 15);
		if (w > 0xFFFF)
			w = 0xFFFF;
		s.n[14] = w >> 8;
		s.n[15] = w;
	}
	if (fl & 0x04) {
		bpf_map_delete_elem(&hop_flows, &k);
		count(S_RST);
	} else if (fl & 0x01) {
		f->flags |= FL_FIN_OUT;
	}
	commit(skb, &s);
	count(S_OUT_XLATE);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
