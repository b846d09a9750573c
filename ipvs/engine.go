package ipvs

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/nfhelper/nfhelper/nfq/packet"
	"github.com/nfhelper/nfhelper/nfq/seqnum"
)

// mssRoom is how much a helped connection's segments may grow on the way:
// the bytes a stream withheld from the previous segment, and edits. The
// peers learn an MSS lower by this much from the SYN and SYN-ACK, so that a
// grown segment still fits the path (its DF bit forbids cutting it).
const mssRoom = MaxCarry + 64

// minMSS is IPv4's default MSS, below which no MSS is lowered.
const minMSS = 536

// maxGap is how far past the expected sequence number a segment may start
// before the stream counts as lost (then it is passed on, no longer read).
const maxGap = 1 << 20

// Engine decides what happens to each queued packet: it schedules new
// connections, feeds helpers their byte streams in order, and keeps the
// sequence-number mapping of every rewritten stream.
type Engine struct {
	Table    *Table // TCP connections
	UDP      *Table // UDP flows
	Stats    Stats
	log      *slog.Logger // Options.Log
	snap     atomic.Pointer[snapshot]
	schedMu  sync.Mutex // every service's mu (see Service)
	markMask uint32
	channels channelTable
	lastLog  [numRefusals]atomic.Int64
	datapath Datapath
	onEnded  func(Ended)                                    // Options.OnEnded
	alive    func(client, vip netip.AddrPort) (bool, error) // Options.Alive

	mu sync.Mutex
	// watched are the learned servers whose packets the datapath queues.
	watched map[netip.AddrPort]bool
	// unnamed are add-on connections whose server reply has not come yet,
	// by the server and the ACK number its SYN-ACK will carry: that reply
	// shows the client's address after the user's SNAT, if any.
	unnamed map[synAck]*Conn
}

// Datapath is how the kernel carries out the engine's verdicts, which
// decides what the worker writes into packets and asks of the kernel.
type Datapath uint8

const (
	// DatapathCompat: nftables maps hold data channels, stream offsets
	// and pure-ACK elements; the worker writes the receiver's numbers
	// itself (Verdict.Offsets, Open, Acks, Announcing).
	DatapathCompat Datapath = iota
	// DatapathKernel: the kernel's seqadj maps sequence numbers after
	// the verdict, and the worker writes numbers that it maps to the
	// stream's (kernelseq.go); ctnetlink expectations are the channels.
	DatapathKernel
)

// Options are what an engine is built with, fixed for its life.
type Options struct {
	MarkMask uint32       // the packet-mark bits that carry a scheduling decision
	Log      *slog.Logger // refusals and helper panics, rate-limited; nil: not logged
	Datapath Datapath
	// OnEnded, where set, is told of each helped connection that leaves
	// the table with elements in the kernel (stream offsets, pure-ACK
	// elements), for the datapath to delete them. It is called from
	// whatever removes the connection, a queue's worker too, and must
	// neither block nor allocate.
	OnEnded func(Ended)
	// Alive, where set, asks conntrack whether it still holds the entry
	// of the connection with original direction client -> vip (the VIP,
	// or the add-on's match), for helped connections idle too long
	// (checkIdle). Called off the per-packet path, without locks held.
	// Nil: such connections stay until their timeout.
	Alive func(client, vip netip.AddrPort) (bool, error)
}

type synAck struct {
	server netip.AddrPort
	ack    seqnum.Value
}

// Stats counts what the engine did.
type Stats struct {
	Packets, Unparsed, Scheduled, NoServer atomic.Uint64
	Adopted, SNATLearned                   atomic.Uint64 // add-on connections; of those, behind the user's SNAT
	Rewritten, Corrected, Held, Dropped    atomic.Uint64 // packets altered, shifted, withholding, dropped out of order
	BadChecksum, HelperErrors              atomic.Uint64
	Channels, Evicted, Stopped             atomic.Uint64 // data channels opened, evicted by the limit; inspections stopped (TLS)
	Used                                   atomic.Uint64 // data channels whose data connection started (their claim freed at once)
	ConntrackGone                          atomic.Uint64 // connections removed because the kernel destroyed their conntrack entry
	Panics                                 atomic.Uint64 // packets whose handling panicked (a bug), passed on unmodified
	Backlogged                             atomic.Uint64 // data channels not opened: the datapath's backlog was full
	Restored                               atomic.Uint64 // connections taken back from conntrack at start
	Throttled                              atomic.Uint64 // segments dropped: their sender has maxEdits rewrites unacknowledged
	Skipped                                atomic.Uint64 // streams that picked up after bytes went by the daemon (fail-open)
	SeqAdjSet                              atomic.Uint64 // kernel datapath: seqadj records set outright before a verdict
	Refused                                [numRefusals]atomic.Uint64
}

// NewEngine builds an engine for services. Real servers and add-ons
// without a mark get one.
func NewEngine(services []*Service, opts Options) (*Engine, error) {
	e := &Engine{
		Table: NewTable(), UDP: NewTable(), markMask: opts.MarkMask, log: opts.Log,
		datapath: opts.Datapath, onEnded: opts.OnEnded, alive: opts.Alive,
		watched: make(map[netip.AddrPort]bool), unnamed: make(map[synAck]*Conn),
	}
	e.channels.passive = make(map[passiveKey]passiveClaim)
	e.channels.active = make(map[passiveKey]passiveClaim)
	e.Table.onRemove = e.removed
	commit, err := e.Prepare(services)
	if err != nil {
		return nil, err
	}
	commit()
	return e, nil
}

// removed lets go of what a connection leaving the table held.
func (e *Engine) removed(c *Conn) {
	e.channels.forget(c)
	if c.help != nil {
		c.mu.Lock()
		x := Ended{Client: c.Client, VIP: c.VIP, Server: c.Server, NAT: c.help.clientNAT,
			Offsets: c.help.offsetsStored, Acks: c.help.acksQueued, conn: c}
		x.AcksNAT = x.Acks && x.NAT.IsValid()
		c.help.ended = true
		c.mu.Unlock()
		if (x.Offsets || x.Acks) && e.onEnded != nil {
			e.onEnded(x)
		}
	}
	if c.Service.AddOn {
		e.mu.Lock()
		for k, u := range e.unnamed {
			if u == c {
				delete(e.unnamed, k)
			}
		}
		e.mu.Unlock()
	}
}

// Verdict is what to do with a packet: drop it, or accept it with a new
// mark and altered bytes where set, once Open is in the kernel (Close may
// follow after).
type Verdict struct {
	Drop        bool
	SetMark     bool
	Mark        uint32
	Packet      []byte // altered packet, valid until the worker's next Process
	Open, Close []Channel
	Offsets     Offsets
	// Acks, of kind ChannelAcks, asks for the connection's pure ACKs from
	// now on; opened like Open, before the verdict, so before any ACK of
	// this packet. Zero: nothing to open.
	Acks Channel
	// DatapathKernel: the helped connection's state after the
	// packet; whether the packet's length change is for the kernel's
	// seqadj to record (the verdict carries NFQA_CT; without it, the
	// verdict must not), and seqadj records to set before the verdict.
	Kernel     *KernelState
	SeqAdjDiff bool
	SeqAdj     *[2]seqnum.Adj // by Direction
	// Announcing (compat datapath, with Open): the connection drops copies
	// of this segment until Engine.Announced is called for it, after this
	// verdict.
	Announcing *Conn
}

// Worker holds one goroutine's scratch space, so that steady state does not
// allocate. It is the ChannelOpener of the connection it is processing.
type Worker struct {
	e           *Engine
	in, out     packet.Packet
	res         Result
	buf         []byte // the altered packet
	data, pay   []byte // a helper's input; the new payload
	resent      []byte // a resent segment with the delivered withheld bytes before it
	cur         *Conn
	now         int64
	open, close []Channel
	kstate      KernelState
	kadj        [2]seqnum.Adj
	peer        *stream // the stream whose SACK edges sackEdge maps
}

// NewWorker returns a worker of e.
func (e *Engine) NewWorker() *Worker {
	const size = 65535 + 2*MaxCarry
	w := &Worker{e: e, buf: make([]byte, 0, size), data: make([]byte, 0, size), pay: make([]byte, 0, size), resent: make([]byte, 0, size)}
	w.res.Opener = w
	return w
}

// Process handles one packet (starting at its IP header) that carried mark.
func (w *Worker) Process(pkt []byte, mark uint32) Verdict {
	e := w.e
	e.Stats.Packets.Add(1)
	if err := packet.Parse(pkt, &w.in); err != nil {
		if errors.Is(err, packet.ErrNotTCP) {
			return w.scheduleUDP(pkt, mark)
		}
		e.Stats.Unparsed.Add(1)
		return Verdict{}
	}
	src, dst := w.in.Src(), w.in.Dst()
	const handshake = packet.FlagSYN | packet.FlagACK | packet.FlagFIN | packet.FlagRST
	flags := w.in.TCP().Flags() & handshake
	snap := e.snap.Load()
	if svc := snap.services[dst]; svc != nil {
		if flags != packet.FlagSYN {
			return Verdict{}
		}
		return w.schedule(svc, src, mark)
	}
	if svc := snap.addOns[mark&e.markMask]; svc != nil {
		v := Verdict{SetMark: true, Mark: mark &^ e.markMask}
		if flags == packet.FlagSYN {
			w.adopt(svc, src, dst, &v)
			v.Packet = w.roomier()
		}
		return v
	}
	c, dir := e.Table.Lookup(src, dst)
	if flags == packet.FlagSYN|packet.FlagACK && (c == nil || dir == FromServer && dst != c.Client) {
		// A SYN-ACK to a translated address answers an add-on SYN that
		// awaits it, if any, even where an older connection holds that
		// address: the user's SNAT to one fixed port gives every
		// connection the same one, and the kernel's NAT lets a new
		// connection take it over from one in TIME_WAIT.
		if n := w.named(src, dst); n != nil {
			c, dir = n, FromServer
		}
	}
	if c == nil {
		return Verdict{}
	}
	return w.help(c, dir)
}

// adopt takes over an add-on connection whose SYN, after the user's DNAT,
// goes from client to server: the first packet that shows both.
func (w *Worker) adopt(svc *Service, client, server netip.AddrPort, v *Verdict) {
	e := w.e
	seq := seqnum.Value(w.in.TCP().Seq())
	c := e.Table.LookupVIP(client, svc.VIP)
	if c == nil || c.Server != server || c.State() != StateSynSent {
		c = newConn(Session{Client: client, VIP: svc.VIP, Server: server}, svc, svc.learn(server))
		e.Table.Insert(c)
		e.Stats.Adopted.Add(1)
	}
	c.startClient(seq)
	e.mu.Lock()
	e.unnamed[synAck{server, seq.Add(1)}] = c
	if !e.watched[server] {
		// Its replies must be queued before conntrack from now on.
		e.watched[server] = true
		w.open = append(w.open[:0], Channel{Kind: ChannelWatch, Server: server})
		v.Open = w.open
	}
	e.mu.Unlock()
}

// named finds the add-on connection a SYN-ACK from server to client answers
// when the user's SNAT changed the client's address, and learns it.
func (w *Worker) named(server, client netip.AddrPort) *Conn {
	e := w.e
	key := synAck{server, seqnum.Value(w.in.TCP().Ack())}
	e.mu.Lock()
	c := e.unnamed[key]
	delete(e.unnamed, key)
	e.mu.Unlock()
	if c == nil {
		return nil
	}
	c.mu.Lock()
	c.help.clientNAT = client
	c.mu.Unlock()
	e.Table.Alias(c, client)
	e.Stats.SNATLearned.Add(1)
	return c
}

func (w *Worker) schedule(svc *Service, client netip.AddrPort, mark uint32) Verdict {
	e := w.e
	// Only a retransmitted SYN finds its connection still opening; any
	// other is a new connection on a reused client port, which must not
	// inherit the old one's server or helper state.
	c := e.Table.LookupVIP(client, svc.VIP)
	if c == nil || c.State() != StateSynSent {
		rs := svc.Schedule(client)
		if rs == nil {
			e.Stats.NoServer.Add(1)
			return Verdict{}
		}
		c = newConn(Session{Client: client, VIP: svc.VIP, Server: rs.Addr}, svc, rs)
		e.Table.Insert(c)
		e.Stats.Scheduled.Add(1)
	}
	c.startClient(seqnum.Value(w.in.TCP().Seq()))
	// A retransmitted SYN gets the same server's mark; the kernel has bound
	// NAT on the first one anyway.
	v := Verdict{SetMark: true, Mark: mark&^e.markMask | c.Real.Mark}
	if c.help != nil {
		v.Packet = w.roomier()
	}
	return v
}

// roomier returns the SYN being processed with its MSS lowered by mssRoom,
// or nil if it has no MSS to lower.
func (w *Worker) roomier() []byte {
	w.buf = append(w.buf[:0], w.in.Buf...)
	packet.Parse(w.buf, &w.out)
	if !w.out.TCP().LowerMSS(mssRoom, minMSS) {
		return nil
	}
	return w.buf
}

// scheduleUDP schedules a new UDP flow to a VIP: its first packet, which
// the datapath queues after conntrack (ct state new).
func (w *Worker) scheduleUDP(pkt []byte, mark uint32) Verdict {
	e := w.e
	client, vip, err := packet.UDPEndpoints(pkt)
	svc := e.snap.Load().udp[vip]
	if err != nil || svc == nil {
		e.Stats.Unparsed.Add(1)
		return Verdict{}
	}
	c := e.UDP.LookupVIP(client, vip)
	if c == nil {
		rs := svc.Schedule(client)
		if rs == nil {
			e.Stats.NoServer.Add(1)
			return Verdict{}
		}
		c = newConn(Session{Client: client, VIP: vip, Server: rs.Addr}, svc, rs)
		c.state = StateUDP
		e.UDP.Insert(c)
		e.Stats.Scheduled.Add(1)
	}
	return Verdict{SetMark: true, Mark: mark&^e.markMask | c.Real.Mark}
}

func (w *Worker) help(c *Conn, dir Direction) Verdict {
	e := w.e
	tcp := w.in.TCP()
	seq, ack, flags := seqnum.Value(tcp.Seq()), seqnum.Value(tcp.Ack()), tcp.Flags()

	c.mu.Lock()
	defer c.mu.Unlock()
	w.cur, w.now = c, now()
	w.open, w.close = w.open[:0], w.close[:0]
	c.track(flags, w.now)
	if flags&packet.FlagSYN != 0 && c.Service.AddOn && dir == FromServer && !c.help.clientNAT.IsValid() {
		e.mu.Lock()
		delete(e.unnamed, synAck{c.Server, ack})
		e.mu.Unlock()
	}
	if c.help == nil {
		return Verdict{} // balanced without a helper: nothing is ever edited
	}
	st, peer := &c.help.streams[dir], &c.help.streams[1-dir]
	if flags&packet.FlagSYN != 0 {
		st.start(seq)
	}
	st.resynced(seq, len(w.in.PayloadBytes()), flags)
	before := c.help.totals()
	read := st.next
	inLen := seqnum.Size(len(w.in.PayloadBytes()))
	if h := c.help; h.announcing && h.annDir == dir && inLen > 0 &&
		seq.Before(h.annEnd) && seq.Add(inLen).After(h.annSeq) {
		// A copy of the segment still waiting for its channels' elements
		// (the sender's retransmission timer fired first): the held one
		// goes on when the kernel has them.
		e.Stats.Dropped.Add(1)
		return Verdict{Drop: true}
	}
	outSeq, payload, drop := w.flow(c, dir, st, seq, flags)
	if drop {
		return Verdict{Drop: true}
	}
	if len(c.help.open) > 0 && !e.kernelSeqAdj() && (flags&packet.FlagRST != 0 || dir == FromServer && flags&packet.FlagFIN != 0) {
		// (The kernel keeps its expectations until the control
		// connection's entry goes, and refuses another master's for the
		// same tuple until then: there the claims stay as long.)
		w.closeOpen(c)
	}
	v := Verdict{Open: w.open, Close: w.close}
	e.Stats.Channels.Add(uint64(len(w.open)))
	if len(w.open) > 0 && !e.kernelSeqAdj() && inLen > 0 {
		// (The kernel datapath's reader makes the expectations before
		// this verdict: nothing waits.)
		c.help.announcing, c.help.annDir, c.help.annSeq, c.help.annEnd = true, dir, seq, seq.Add(inLen)
		v.Announcing = c
	}
	if !e.kernelSeqAdj() && !c.help.acksQueued && !c.help.ended && c.help.needsAcks() {
		// (The kernel datapath's helper queue has every packet.)
		c.help.acksQueued = true
		v.Acks = Channel{Kind: ChannelAcks, Client: c.Client, Server: c.Server, NAT: c.help.clientNAT}
	}

	outAck, sack := ack, false
	if flags&packet.FlagACK != 0 && peer.mapsAcks() {
		var skipped bool
		if outAck, skipped = peer.acked(ack); skipped {
			e.Stats.Skipped.Add(1)
		}
		peer.prune(outAck)
		sack = (peer.base != 0 || len(peer.edits) > 0) && tcp.DataOffset() > packet.TCPMinHeaderLen
	}
	if e.kernelSeqAdj() {
		outLen := int(inLen)
		if payload != nil {
			outLen = len(payload)
		}
		outSeq = w.kernelNumbers(st, seq, outSeq, int(inLen), outLen, st.next != read, &v)
		if flags&packet.FlagACK != 0 {
			outAck = w.kernelAck(peer, ack, outAck, &v)
		}
		sack = (sack || peer.kadj != seqnum.Adj{}) && tcp.DataOffset() > packet.TCPMinHeaderLen
		v.Kernel = w.kernelState(c, dir)
	} else {
		c.offsets(before, &v)
	}
	syn := flags&packet.FlagSYN != 0
	if payload == nil && outSeq == seq && outAck == ack && !sack {
		if syn {
			v.Packet = w.roomier()
		}
		return v
	}

	if payload != nil {
		out, err := packet.Rewrite(w.buf[:0], &w.in, []packet.Edit{{Off: 0, Len: len(w.in.PayloadBytes()), New: payload}})
		if err != nil {
			// Cannot happen for payloads the stream bounded; never send a
			// half-corrected packet.
			e.Stats.HelperErrors.Add(1)
			return Verdict{Drop: true}
		}
		w.buf = out
		e.Stats.Rewritten.Add(1)
	} else {
		w.buf = append(w.buf[:0], w.in.Buf...)
	}
	packet.Parse(w.buf, &w.out)
	t := w.out.TCP()
	if syn {
		t.LowerMSS(mssRoom, minMSS)
	}
	t.SetSeq(uint32(outSeq))
	if flags&packet.FlagACK != 0 {
		t.SetAck(uint32(outAck))
		if sack {
			w.peer = peer
			t.AdjustSACK(w.sackEdge)
		}
	}
	e.Stats.Corrected.Add(1)
	v.Packet = w.buf
	return v
}

// sackEdge maps a SACK edge of the peer stream's bytes, as the receiver
// wrote it, to what to write instead.
func (w *Worker) sackEdge(edge uint32) uint32 {
	x := w.peer.input(seqnum.Value(edge))
	if w.e.kernelSeqAdj() {
		if a, ok := w.peer.kadj.AckFor(x); ok {
			return uint32(a)
		}
	}
	return uint32(x)
}

// flow runs one segment through its stream: it returns the sequence number
// the receiver must see, and the payload it must get when that differs from
// the packet's (nil: unchanged), or drop for a segment past a gap.
func (w *Worker) flow(c *Conn, dir Direction, st *stream, seq seqnum.Value, flags uint8) (outSeq seqnum.Value, payload []byte, drop bool) {
	e := w.e
	in := w.in.PayloadBytes()
	fin := flags&packet.FlagFIN != 0
	if fin && st.sync == synced {
		st.fin = true
	}
	shifted := seq.Shift(st.off(seq))
	if st.sync != synced || st.stopped || c.help.helper == nil || flags&(packet.FlagSYN|packet.FlagRST) != 0 {
		return shifted, nil, false
	}
	end := seq.Add(seqnum.Size(len(in)))
	newData := len(in) > 0 && end.After(st.next) || (fin && end == st.next && len(st.carry) > 0)
	if len(in) == 0 && !newData {
		return shifted, nil, false
	}
	if seq.After(st.next) {
		if st.next.Size(seq) > maxGap {
			st.sync = lost
			return shifted, nil, false
		}
		if !st.gapped || st.gapAt != seq {
			// Its line may have begun in the missing bytes: let the
			// sender resend it once the gap is filled.
			st.gapped, st.gapAt = true, seq
			e.Stats.Dropped.Add(1)
			return 0, nil, true
		}
		// Resent as it was: its sender resends from the first byte it
		// has no ACK for, so the missing bytes arrived without the daemon
		// (the queue failed open) and will not come again. (Their ACKs
		// may not come either: a clean connection's pure ACKs pass by.)
		st.next, st.carry, st.hold, st.rel = seq, st.carry[:0], 0, st.rel[:0]
		e.Stats.Skipped.Add(1)
	}
	st.gapped = false
	if !w.in.TCPChecksumValid() {
		// The receiver discards it and the sender resends it; read it then.
		e.Stats.BadChecksum.Add(1)
		return shifted, nil, false
	}
	origSeq, origIn := seq, in
	if len(st.rel) > 0 && seq.After(st.relFrom) && !seq.After(st.relEnd()) {
		// The sender resends from the end of bytes it believes delivered:
		// resend them too.
		in = append(append(w.resent[:0], st.rel[:st.relFrom.Size(seq)]...), in...)
		seq = st.relFrom
	}

	out := w.pay[:0]
	start := st.heldFrom()
	if seq.Before(start) {
		n := seqnum.Size(len(in))
		if start.Before(end) {
			n = seq.Size(start)
		}
		out, start = st.replay(out, seq, in[:n])
	}
	outSeq = start.Shift(st.off(start))
	if newData {
		if len(st.edits) >= maxEdits/2 {
			// The receiver has yet to acknowledge that many rewrites: take
			// no more until it does, or retransmissions of the oldest
			// would go out unrewritten. (Half: one segment's own edits
			// must fit.)
			e.Stats.Throttled.Add(1)
			return 0, nil, true
		}
		var ok bool
		if out, ok = w.inspect(c, dir, st, in[seq.Size(st.next):], fin, out); !ok {
			return shifted, nil, false
		}
		st.next = end
	}
	if len(out) == 0 && len(in) > 0 && st.haveLast {
		// All withheld: repeat the last delivered byte, so that the
		// receiver acknowledges and the sender sees its bytes taken.
		out = append(out, st.last)
		outSeq = outSeq.Shift(-1)
	}
	if outSeq == origSeq && bytes.Equal(out, origIn) {
		return outSeq, nil, false
	}
	return outSeq, out, false
}

// inspect presents carried and new bytes to the helper and appends what the
// receiver gets now to out. False: the helper's answer broke its contract;
// the bytes pass as they are and the stream is no longer read.
func (w *Worker) inspect(c *Conn, dir Direction, st *stream, fresh []byte, fin bool, out []byte) ([]byte, bool) {
	e := w.e
	data := append(append(w.data[:0], st.carry...), fresh...)
	fixed := len(st.carry) - st.hold
	r := &w.res
	r.Reset()
	if !w.callHelper(c, dir, data, fixed, fin) {
		// A helper bug: this connection goes on unread, the others helped.
		c.help.streams[FromClient].stopped, c.help.streams[FromServer].stopped = true, true
		return out, false
	}
	w.refused(c, r.Refusals)
	if !r.valid(len(data), fixed, fin) {
		e.Stats.HelperErrors.Add(1)
		st.stopped = true
		return out, false
	}
	first := st.next.Shift(-seqnum.Delta(len(st.carry))) // input position of data[0]
	cur := fixed
	// Edits that keep the length together (a 227 whose free text gave way
	// to a longer address) are recorded as one: then no position is
	// shifted, and the receiver's ACKs need no mapping (needsAcks).
	one := len(r.Edits) > 1 && r.Delta() == 0 && r.Edits[len(r.Edits)-1].Off+r.Edits[len(r.Edits)-1].Len-r.Edits[0].Off <= maxEditText
	from := 0
	for i, ed := range r.Edits {
		out = append(out, data[cur:ed.Off]...)
		if i == 0 {
			from = len(out)
		}
		out = append(out, ed.New...)
		if !one {
			st.record(first.Add(seqnum.Size(ed.Off)), ed.Len, ed.New)
		}
		cur = ed.Off + ed.Len
	}
	if one {
		st.record(first.Add(seqnum.Size(r.Edits[0].Off)), cur-r.Edits[0].Off, out[from:])
	}
	keep := len(data) - r.Hold
	out = append(out, data[cur:keep]...)
	if keep > fixed {
		st.last, st.haveLast = out[len(out)-1], true
	}
	if r.Hold > 0 {
		e.Stats.Held.Add(1)
	}
	if st.carry == nil {
		st.carry = make([]byte, 0, MaxCarry)
	}
	st.carry = append(st.carry[:0], data[len(data)-r.Carry:]...)
	st.hold = r.Hold
	if r.Stop {
		c.help.streams[FromClient].stopped, c.help.streams[FromServer].stopped = true, true
		e.Stats.Stopped.Add(1)
	}
	return out, true
}

// callHelper runs the connection's helper; false if it panicked.
func (w *Worker) callHelper(c *Conn, dir Direction, data []byte, fixed int, fin bool) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			w.e.Stats.Panics.Add(1)
			if w.e.log != nil {
				w.e.log.Error("helper panic; connection no longer read", "panic", p, "service", c.Service.Name,
					"client", c.Client, "server", c.Server, "total", w.e.Stats.Panics.Load())
			}
			ok = false
		}
	}()
	c.help.helper.Inspect(dir, data, fixed, fin, &w.res)
	return true
}

// valid checks a helper's answer against the Inspect contract.
func (r *Result) valid(n, fixed int, fin bool) bool {
	if r.Carry < 0 || r.Carry > min(n, MaxCarry) || r.Hold < 0 || r.Hold > r.Carry {
		return false
	}
	if (fin || r.Stop) && r.Hold > 0 {
		return false
	}
	end := fixed
	for _, ed := range r.Edits {
		if ed.Off < end || ed.Len < 0 || ed.Off+ed.Len > n-r.Hold || len(ed.New) > maxEditText {
			return false
		}
		end = ed.Off + ed.Len
	}
	return true
}

// refused counts refusals and logs them, at most once a second per reason.
func (w *Worker) refused(c *Conn, why []Refusal) {
	e := w.e
	for _, r := range why {
		e.Stats.Refused[r].Add(1)
		if e.log == nil {
			continue
		}
		// 0: never logged (now() starts near 0, so 0 cannot mean "at 0").
		last := e.lastLog[r].Load()
		if (last == 0 || w.now-last >= 1e9) && e.lastLog[r].CompareAndSwap(last, max(w.now, 1)) {
			e.log.Warn("refused data channel", "reason", r.String(), "service", c.Service.Name,
				"client", c.Client, "server", c.Server, "total", e.Stats.Refused[r].Load())
		}
	}
}
