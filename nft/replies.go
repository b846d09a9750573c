package nft

import (
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// ReplyMark is the packet-mark bit the daemon's verdict sets on a request
// to a UDP service whose servers answer from a port of their own (TFTP).
// After NAT, the reply_open chain notes from that request where its answer
// will come from (server . the client as the server sees it) and that it
// must leave as the VIP; the answer's first packet finds the note
// (srcnat) and the rest of the transfer follows its conntrack entry. The
// kernel does it all: no per-transfer nftables transaction, and the note
// exists before the request reaches the server.
const ReplyMark = 0x08000000

// replyOpenPriority runs reply_open after every source NAT of the user's
// (srcnat, 100): the request's reply tuple then names the client as the
// server will see it.
const replyOpenPriority = 200

// repliesSet: server . client . client port (as the server sees the
// client) : the VIP the reply must come from. Written from the packet path
// by a request, read by its reply's first packet.
func (f *family) repliesSet(t *nftables.Table) *nftables.Set {
	addr := nftables.TypeIPAddr
	if f.v6 {
		addr = nftables.TypeIP6Addr
	}
	return &nftables.Set{Table: t, Name: f.name("replies"), IsMap: true, HasTimeout: true, Dynamic: true, Concatenation: true,
		Size: repliesSize, KeyType: nftables.MustConcatSetType(addr, addr, nftables.TypeInetService), DataType: addr}
}

// replyDNATSet: server . client . client port (as the server sees the
// client, after the user's SNAT) : client . client port, for a UDP
// add-on's request the user's rules source-NATed: the answer, addressed to
// the router, goes back to the client.
func (f *family) replyDNATSet(t *nftables.Table) *nftables.Set {
	addr := nftables.TypeIPAddr
	if f.v6 {
		addr = nftables.TypeIP6Addr
	}
	return &nftables.Set{Table: t, Name: f.name("reply_dnat"), IsMap: true, HasTimeout: true, Dynamic: true, Concatenation: true,
		Size: repliesSize, KeyType: nftables.MustConcatSetType(addr, addr, nftables.TypeInetService),
		DataType: nftables.MustConcatSetType(addr, nftables.TypeInetService)}
}

// replyWaitSet: client . client port (as the server sees the client) while
// a request of it awaits its answer.
func (f *family) replyWaitSet(t *nftables.Table) *nftables.Set {
	addr := nftables.TypeIPAddr
	if f.v6 {
		addr = nftables.TypeIP6Addr
	}
	return &nftables.Set{Table: t, Name: f.name("reply_wait"), HasTimeout: true, Dynamic: true, Concatenation: true,
		Size: repliesSize, KeyType: nftables.MustConcatSetType(addr, nftables.TypeInetService)}
}

// repliesSize bounds the requests awaiting their answer at once, each
// kept for its service's data_channel_timeout (5 minutes by default):
// 65535, a dynamic set's default, would hold a sustained 218 requests a
// second; this, 3,500.
const repliesSize = 1 << 20

// repliesKey loads the replies key from the request's reply tuple: the
// server, and the client and port it answers (the client's, unless the
// user's SNAT translated them).
func repliesKey(f *family) []expr.Any {
	src, dst := expr.CtKeySRCIP, expr.CtKeyDSTIP
	if f.v6 {
		src, dst = expr.CtKeySRCIP6, expr.CtKeyDSTIP6
	}
	ct := func(key expr.CtKey, n uint32) field {
		return field{len: n, load: func(reg uint32) expr.Any { return &expr.Ct{Register: reg, Key: key, Direction: 1} }}
	}
	return concat(ct(src, f.addrLen), ct(dst, f.addrLen), ct(expr.CtKeyPROTODST, 2))
}

// replyWaitKey loads the reply_wait key from the request's reply tuple:
// the client and port its server answers.
func replyWaitKey(f *family) []expr.Any {
	dst := expr.CtKeyDSTIP
	if f.v6 {
		dst = expr.CtKeyDSTIP6
	}
	ct := func(key expr.CtKey, n uint32) field {
		return field{len: n, load: func(reg uint32) expr.Any { return &expr.Ct{Register: reg, Key: key, Direction: 1} }}
	}
	return concat(ct(dst, f.addrLen), ct(expr.CtKeyPROTODST, 2))
}

// ctOrigFlow loads a new flow's original source, destination and
// destination port: the replies key of an answer, whatever NAT did to its
// packets since (the reply_dnat of a UDP add-on's).
func ctOrigFlow(f *family) []expr.Any {
	return concat(ctOrigSrc(f.v6), ctOrigDst(f.v6), ctOrigDstPort())
}

// ipsSrcNAT is IPS_SRC_NAT: the connection's source is translated.
const ipsSrcNAT = 0x10

// repliesData is where a replies value goes: after the key's registers.
func repliesData(f *family) uint32 {
	return unix.NFT_REG32_00 + words(f.addrLen)*2 + 1
}

// replyOpenRules fill reply_open: a request the daemon marked writes (or
// renews) its note, for its service's channel timeout, and loses the mark.
// It also notes that its client port waits (reply_wait), and, where the
// user's SNAT translated it (a UDP add-on behind masquerade), where the
// answer goes back to (reply_dnat).
func (rs *Ruleset) replyOpenRules(a ruleAdder, spec *Spec) {
	ch := &nftables.Chain{Name: replyOpenChain}
	note := func(dest netip.AddrPort, timeout time.Duration) {
		f := rs.fams[0]
		if rs.fams[1].of(dest.Addr()) {
			f = rs.fams[1]
		}
		update := func(set *nftables.Set, data uint32) []expr.Any {
			return []expr.Any{&expr.Dynset{SrcRegKey: unix.NFT_REG32_00, SrcRegData: data, SetName: set.Name, SetID: set.ID,
				Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: timeout.Round(time.Second)}}
		}
		request := [][]expr.Any{markBitsSet(ReplyMark), nfproto(f.proto), l4protoUDP(), ctOrigIs(dest)}
		data := repliesData(f)
		a.rule(ch, append(request, repliesKey(f), concatAt(data, ctOrigDst(f.v6)), update(f.replies, data))...)
		a.rule(ch, append(request, replyWaitKey(f), update(f.replyWait, 0))...)
		a.rule(ch, append(request, ctStatusHas(ipsSrcNAT), repliesKey(f), concatAt(data, ctOrigSrc(f.v6), ctOrigSrcPort()), update(f.replyDNAT, data))...)
	}
	for _, svc := range spec.Services {
		if svc.Replies > 0 {
			note(svc.VIP, svc.Replies)
		}
	}
	for _, ad := range spec.AddOns {
		if ad.Replies > 0 {
			note(ad.Match, ad.Replies)
		}
	}
	a.rule(ch, markBitsSet(ReplyMark), setMark(ReplyMark, 0))
}

// replyOpenChain is reply_open's name: a base chain (hookReplies) whose
// rules Update replaces.
const replyOpenChain = "reply_open"

// replySNATRules (srcnat): a new UDP flow that a note names leaves as the
// VIP, its port kept where free. The note stays until its timeout (a
// request renews it): like an expectation the kernel's helper would not
// consume, any flow from that server to that client port is taken for the
// request's answer meanwhile.
func replySNATRules(a ruleAdder, snat *nftables.Chain, m famMatch) {
	f := m.f
	a.rule(snat, m.fam, l4protoUDP(), ctOrigFlow(f), lookupTo(f.replies), natTo(expr.NATTypeSourceNAT, f, false))
}

// replyDNATRules (dstnat): an answer to the client as the user's SNAT
// showed it to the server goes back to the client.
func replyDNATRules(a ruleAdder, dnat *nftables.Chain, m famMatch) {
	f := m.f
	a.rule(dnat, m.fam, l4protoUDP(), m.flow, lookupTo(f.replyDNAT), natTo(expr.NATTypeDestNAT, f, true))
}

// replyConnRules (new_conn): such a flow carries ChannelMark, as data
// connections do, for the user's forward policy.
//
// A new flow to a client port that awaits an answer, from anywhere else
// (no note names it), is foreign: at a bounded rate it is queued with
// ReplyMark for the daemon to count and log (and drop with block_refused);
// past that rate, or with the daemon down, it passes untranslated.
func replyConnRules(a ruleAdder, fresh *nftables.Chain, m famMatch, q []expr.Any) {
	f := m.f
	a.rule(fresh, m.fam, l4protoUDP(), ctOrigFlow(f), lookupTo(f.replies), setCtMark(ChannelMark))
	a.rule(fresh, m.fam, l4protoUDP(), ctStateIs(newBit), ctMarkLacks(ChannelMark), concat(ctOrigDst(f.v6), ctOrigDstPort()), lookup(f.replyWait),
		[]expr.Any{&expr.Limit{Type: expr.LimitTypePkts, Rate: foreignRate, Unit: expr.LimitTimeSecond, Burst: foreignRate}},
		setMark(ReplyMark, ReplyMark), q)
}

// foreignRate bounds the foreign answers queued a second.
const foreignRate = 50
