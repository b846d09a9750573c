package ipvs

import (
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/nfhelper/nfhelper/nfq/packet"
	"github.com/nfhelper/nfhelper/nfq/seqnum"
)

// MSSRoom is how much a helped connection's segments may grow on the way:
// the bytes a stream withheld from the previous segment, and edits. The
// peers learn an MSS lower by this much from the SYN and SYN-ACK, so that a
// grown segment still fits the path (its DF bit forbids cutting it).
// Exported for the rules that lower it where nftables schedules the SYN.
const MSSRoom = MaxCarry + 64

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
	mode     datapathMode                                   // Options.Datapath's
	onEnded  func(Ended)                                    // Options.OnEnded
	alive    func(client, vip netip.AddrPort) (bool, error) // Options.Alive
	// originalDst is Options.OriginalDst; pickAtSynAck: the compat
	// datapath, which picks connections up at the server's SYN-ACK.
	originalDst  func(server, client netip.AddrPort) (netip.AddrPort, error)
	pickAtSynAck bool
	replyMark    uint32 // Options.ReplyMark
	helperStats  helperStatsTable

	mu sync.Mutex
	// watched are the learned servers whose packets the datapath queues.
	watched map[netip.AddrPort]bool
	// unnamed are add-on connections whose server reply has not come yet,
	// by the server and the ACK number its SYN-ACK will carry: that reply
	// shows the client's address after the user's SNAT, if any.
	unnamed map[synAck]*Conn
	// replies are the reply flows running, to their request flows.
	replies map[replyKey]*Conn
	// pending are the requests awaiting their answer, by client host.
	pending map[netip.Addr][]pendingRequest
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
	// OriginalDst, where set, asks conntrack for the original destination
	// (the VIP) of the TCP connection whose reply direction is server ->
	// client: the compat datapath picks a kernel-scheduled helped
	// connection up at its SYN-ACK, which does not show the VIP when
	// several services hold the server. Called by the queue's worker,
	// without locks held (the SYN-ACK waits for the answer). Nil: such
	// connections go unhelped.
	OriginalDst func(server, client netip.AddrPort) (netip.AddrPort, error)
	// ReplyMark is the packet-mark bit (outside MarkMask) a request's
	// verdict sets for the kernel to let its server answer from a port of
	// its own (DatagramHelper).
	ReplyMark uint32
}

type synAck struct {
	server netip.AddrPort
	ack    seqnum.Value
}

// NewEngine builds an engine for services. Real servers and add-ons
// without a mark get one.
func NewEngine(services []*Service, opts Options) (*Engine, error) {
	e := &Engine{
		Table: NewTable(), UDP: NewTable(), markMask: opts.MarkMask, log: opts.Log,
		mode: newDatapathMode(opts.Datapath), onEnded: opts.OnEnded, alive: opts.Alive,
		originalDst: opts.OriginalDst, pickAtSynAck: opts.Datapath == DatapathCompat, replyMark: opts.ReplyMark,
		watched: make(map[netip.AddrPort]bool), unnamed: make(map[synAck]*Conn), replies: make(map[replyKey]*Conn),
		pending: make(map[netip.Addr][]pendingRequest),
	}
	e.channels.passive = make(map[passiveKey]passiveClaim)
	e.channels.active = make(map[passiveKey]passiveClaim)
	e.Table.onRemove = e.removed
	e.UDP.onRemove = e.forgetReplies
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
	seg         segment // the helped segment being handled
	verdict     Verdict // its verdict, until help returns it
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
	if flags == packet.FlagSYN|packet.FlagACK && e.pickAtSynAck {
		if p := snap.pickups[src]; p != nil {
			c, dir = w.pickUpSynAck(p, c, dir, src, dst), FromServer
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
		svc.countSession()
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
		svc.countSession()
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

// roomier returns the SYN being processed with its MSS lowered by MSSRoom,
// or nil if it has no MSS to lower.
func (w *Worker) roomier() []byte {
	w.buf = append(w.buf[:0], w.in.Buf...)
	packet.Parse(w.buf, &w.out)
	if !w.out.TCP().LowerMSS(MSSRoom, minMSS) {
		return nil
	}
	return w.buf
}

// scheduleUDP schedules a new UDP flow to a VIP: its first packet, which
// the datapath queues after conntrack (ct state new). A flow without a
// reply stays new: its next packets come too, and keep their server. A
// service's datagram helper reads each: a request lets its server answer
// from a port of its own (the verdict's ReplyMark has the kernel translate
// that reply flow).
func (w *Worker) scheduleUDP(pkt []byte, mark uint32) Verdict {
	e := w.e
	client, vip, payload, err := packet.UDPDatagram(pkt)
	if err != nil {
		e.Stats.Unparsed.Add(1)
		return Verdict{}
	}
	if e.replyMark != 0 && mark&e.replyMark != 0 {
		return w.foreignReply(client, vip, mark)
	}
	snap := e.snap.Load()
	svc := snap.udp[vip]
	if svc == nil {
		if a := snap.addOns[mark&e.markMask]; a != nil && a.UDP {
			return w.adoptRequest(a, client, vip, payload, mark)
		}
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
	v := Verdict{SetMark: true, Mark: mark&^e.markMask | c.Real.Mark}
	if svc.Datagram != nil {
		w.request(c, payload, &v)
	}
	return v
}

// adoptRequest takes a datagram of a UDP add-on (the user's port forward)
// that the user's DNAT sent from client to server: the forward rule queued
// it with the add-on's mark, which the verdict clears.
func (w *Worker) adoptRequest(svc *Service, client, server netip.AddrPort, payload []byte, mark uint32) Verdict {
	e := w.e
	c := e.UDP.LookupVIP(client, svc.VIP)
	if c != nil && c.Server != server {
		// The user's rules moved the client's flow to another server
		// (a new conntrack entry): it is a new flow.
		e.UDP.Remove(c)
		c = nil
	}
	if c == nil {
		c = newConn(Session{Client: client, VIP: svc.VIP, Server: server}, svc, svc.learn(server))
		c.state = StateUDP
		e.UDP.Insert(c)
		e.Stats.Adopted.Add(1)
	}
	v := Verdict{SetMark: true, Mark: mark &^ e.markMask}
	w.request(c, payload, &v)
	return v
}

// foreignReply counts (and logs, rate-limited) a new flow to a client port
// with a request pending that came from a host other than the request's
// server: it gets no translation. The nft rule that queued it (ReplyMark)
// passes only such flows, at a bounded rate. With BlockRefused it is
// dropped.
func (w *Worker) foreignReply(from, to netip.AddrPort, mark uint32) Verdict {
	e := w.e
	w.now = now()
	v := Verdict{SetMark: true, Mark: mark &^ e.replyMark}
	e.mu.Lock()
	var c *Conn
	for _, r := range e.pending[to.Addr()] {
		if r.conn.Client == to {
			c = r.conn
			break
		}
	}
	e.mu.Unlock()
	r := RefuseForeignReply
	e.Stats.Refused[r].Add(1)
	service, server := "", netip.AddrPort{}
	if c != nil {
		// nil: the client as the user's SNAT shows it (add-on mode), or
		// a request no longer pending; counted without its service.
		service, server = c.Service.Name, c.Server
		c.Service.helperStats.Refused[r].Add(1)
		v.Drop = c.Service.policy().BlockRefused
	}
	if last := e.lastLog[r].Load(); e.log != nil && (last == 0 || w.now-last >= 1e9) && e.lastLog[r].CompareAndSwap(last, max(w.now, 1)) {
		e.log.Warn("refused reply flow", "reason", r.String(), "service", service, "client", to, "from", from,
			"server", server, "dropped", v.Drop, "total", e.Stats.Refused[r].Load())
	}
	return v
}

// request has c's datagram helper read a client's datagram.
func (w *Worker) request(c *Conn, payload []byte, v *Verdict) {
	e := w.e
	reply, about := c.Service.Datagram.Request(payload)
	if !reply {
		e.Stats.NotRequests.Add(1)
		return
	}
	c.Service.helperStats.Sessions.Add(1)
	w.now = now()
	if !e.admitRequest(c, w.now) {
		// Dropped: the client sends it again once an answer came.
		v.Drop = true
		w.refused(c, []Refusal{RefusePending})
		return
	}
	e.Stats.ReplyFlows.Add(1)
	c.Service.helperStats.ChannelsOpened.Add(1)
	v.Mark |= e.replyMark
	c.mu.Lock()
	if c.reply == nil {
		c.reply = &replyState{}
	}
	c.reply.about = about
	c.mu.Unlock()
}
