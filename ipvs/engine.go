package ipvs

import (
	"net/netip"
	"sync/atomic"

	"github.com/nfhelper/nfhelper/nfq"
)

// Engine decides what happens to each queued packet: it schedules new
// connections, lets helpers read payloads, and keeps seq/ack corrections.
type Engine struct {
	Table    *Table
	services map[netip.AddrPort]*Service
	markMask uint32
	Stats    Stats
}

// Stats counts what the engine did; read with Load.
type Stats struct {
	Packets, Unparsed, Scheduled, NoServer, Rewritten, Corrected, BadChecksum, RewriteFailed, Channels atomic.Uint64
}

// NewEngine builds an engine for services; markMask holds the bits of the
// packet mark that carry a scheduling decision.
func NewEngine(services []*Service, markMask uint32) *Engine {
	e := &Engine{Table: NewTable(), services: make(map[netip.AddrPort]*Service), markMask: markMask}
	for _, s := range services {
		e.services[s.VIP] = s
	}
	return e
}

// Verdict is what to do with a packet: accept it, with a new mark and
// altered bytes where set, once Channels (if any) are in the kernel.
type Verdict struct {
	SetMark  bool
	Mark     uint32
	Packet   []byte // altered packet, valid until the worker's next Process
	Channels []Channel
}

// Worker holds one goroutine's scratch space, so that steady state does not
// allocate.
type Worker struct {
	e   *Engine
	in  nfq.Packet
	out nfq.Packet
	res Result
	buf []byte
}

// NewWorker returns a worker of e.
func (e *Engine) NewWorker() *Worker {
	return &Worker{e: e, buf: make([]byte, 0, 65535)}
}

// Process handles one packet (starting at its IP header) that carried mark.
func (w *Worker) Process(pkt []byte, mark uint32) Verdict {
	e := w.e
	e.Stats.Packets.Add(1)
	if err := nfq.Parse(pkt, &w.in); err != nil {
		e.Stats.Unparsed.Add(1)
		return Verdict{}
	}
	src, dst := w.in.Src(), w.in.Dst()
	if svc := e.services[dst]; svc != nil {
		const newConn = nfq.FlagSYN | nfq.FlagACK | nfq.FlagFIN | nfq.FlagRST
		if w.in.TCP().Flags()&newConn != nfq.FlagSYN {
			return Verdict{}
		}
		return w.schedule(svc, src, mark)
	}
	c, dir := e.Table.Lookup(src, dst)
	if c == nil {
		return Verdict{}
	}
	return w.help(c, dir)
}

func (w *Worker) schedule(svc *Service, client netip.AddrPort, mark uint32) Verdict {
	e := w.e
	c := e.Table.LookupVIP(client, svc.VIP)
	if c == nil || c.State() == StateClose {
		rs := svc.Schedule(client)
		if rs == nil {
			e.Stats.NoServer.Add(1)
			return Verdict{}
		}
		c = &Conn{Session: Session{Client: client, VIP: svc.VIP, Server: rs.Addr}, Service: svc, Real: rs}
		c.expires = now() + int64(stateTimeout[StateSynSent])
		e.Table.Insert(c)
		e.Stats.Scheduled.Add(1)
	}
	// A retransmitted SYN gets the same server's mark; the kernel has bound
	// NAT on the first one anyway.
	return Verdict{SetMark: true, Mark: mark&^e.markMask | c.Real.Mark}
}

func (w *Worker) help(c *Conn, dir Direction) Verdict {
	e := w.e
	tcp := w.in.TCP()
	seq, ack, flags := tcp.Seq(), tcp.Ack(), tcp.Flags()
	var v Verdict

	c.mu.Lock()
	defer c.mu.Unlock()
	c.track(flags, now())

	w.res.Reset()
	if payload := w.in.PayloadBytes(); len(payload) > 0 && c.Service.Helper != nil {
		c.Service.Helper.Inspect(&c.Session, dir, payload, &w.res)
	}
	if len(w.res.Edits) > 0 || len(w.res.Channels) > 0 {
		// Never act on bytes the receiver will discard.
		if !w.in.TCPChecksumValid() {
			e.Stats.BadChecksum.Add(1)
			w.res.Reset()
		}
	}
	if len(w.res.Edits) > 0 {
		out, err := nfq.Rewrite(w.buf[:0], &w.in, w.res.Edits)
		if err == nil {
			w.buf = out
			err = nfq.Parse(out, &w.out)
		}
		if err != nil {
			e.Stats.RewriteFailed.Add(1)
			w.res.Reset()
		} else {
			c.seq[dir].Record(seq, int32(w.res.Delta()))
			v.Packet = out
			e.Stats.Rewritten.Add(1)
		}
	}
	v.Channels = w.res.Channels
	e.Stats.Channels.Add(uint64(len(v.Channels)))

	mine, peer := &c.seq[dir], &c.seq[1-dir]
	moveSeq := mine.Active() && mine.Seq(seq) != seq
	// SACK blocks may lie past the correction point while the ack does not.
	moveAck := peer.Active() && flags&nfq.FlagACK != 0 &&
		(peer.Ack(ack) != ack || tcp.DataOffset() > nfq.TCPMinHeaderLen)
	if !moveSeq && !moveAck {
		return v
	}
	if v.Packet == nil {
		w.buf = append(w.buf[:0], w.in.Buf...)
		nfq.Parse(w.buf, &w.out)
		v.Packet = w.buf
	}
	t := w.out.TCP()
	if moveSeq {
		t.SetSeq(mine.Seq(seq))
	}
	if moveAck {
		t.SetAck(peer.Ack(ack))
		t.AdjustSACK(peer.Ack)
	}
	e.Stats.Corrected.Add(1)
	return v
}
