package nft

import (
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

// repliesData is where a replies value goes: after the key's registers.
func repliesData(f *family) uint32 {
	return unix.NFT_REG32_00 + words(f.addrLen)*2 + 1
}

// replyOpenRules fill reply_open: a request the daemon marked writes (or
// renews) its note, for its service's channel timeout, and loses the mark.
func (rs *Ruleset) replyOpenRules(a ruleAdder, spec *Spec) {
	ch := &nftables.Chain{Name: replyOpenChain}
	for _, svc := range spec.Services {
		if svc.Replies == 0 {
			continue
		}
		f := rs.fams[0]
		if rs.fams[1].of(svc.VIP.Addr()) {
			f = rs.fams[1]
		}
		data := repliesData(f)
		a.rule(ch, markBitsSet(ReplyMark), nfproto(f.proto), l4protoUDP(), ctOrigIs(svc.VIP), repliesKey(f),
			concatAt(data, ctOrigDst(f.v6)),
			[]expr.Any{&expr.Dynset{SrcRegKey: unix.NFT_REG32_00, SrcRegData: data, SetName: f.replies.Name, SetID: f.replies.ID,
				Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: svc.Replies.Round(time.Second)}})
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
	a.rule(snat, m.fam, l4protoUDP(), concat(addrField(f.v6, true), addrField(f.v6, false), portField(false)),
		lookupTo(f.replies), natTo(expr.NATTypeSourceNAT, f, false))
}

// replyConnRules (new_conn): such a flow carries ChannelMark, as data
// connections do, for the user's forward policy.
func replyConnRules(a ruleAdder, fresh *nftables.Chain, m famMatch) {
	f := m.f
	a.rule(fresh, m.fam, l4protoUDP(), concat(addrField(f.v6, true), addrField(f.v6, false), portField(false)),
		lookupTo(f.replies), setCtMark(ChannelMark))
}
