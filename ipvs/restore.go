package ipvs

import (
	"net/netip"

	"github.com/nfhelper/nfhelper/nfq/packet"
	"github.com/nfhelper/nfhelper/nfq/seqnum"
)

// Offsets asks the datapath to record a connection's stream offsets in the
// kernel before the verdict, where a restarted daemon finds them: the
// receivers have seen lengths change, and a daemon that forgot it would
// shift every later segment wrongly.
type Offsets struct {
	Store       bool
	Replace     bool // recorded before
	Client, VIP netip.AddrPort
	Off         [2]int32 // by the Direction that sends the stream (seqnum.Delta, as the kernel's map stores it)
}

// Restore takes back a connection that an earlier daemon balanced and that
// conntrack still holds (client -> vip, answered by server). A helped one's
// streams pick up at their next segment with the offsets the earlier
// daemon recorded; acks: the earlier daemon had its pure ACKs queued (the
// element is carried over). False when no configured service and server
// match.
func (e *Engine) Restore(client, vip, server netip.AddrPort, established bool, off [2]int32, acks bool) bool {
	svc := e.snap.Load().services[vip]
	if svc == nil {
		return false
	}
	if e.Table.LookupVIP(client, vip) != nil {
		return true
	}
	rs := svc.counted(server)
	if rs == nil {
		return false
	}
	c := newConn(Session{Client: client, VIP: vip, Server: server}, svc, rs)
	if established {
		c.setState(StateEstablished, c.seen)
	}
	if c.help != nil {
		for d := range c.help.streams {
			c.help.streams[d].resume(seqnum.Delta(off[d]))
		}
		c.help.offsetsStored = off != [2]int32{}
		c.help.acksQueued = acks
	}
	e.Table.Insert(c)
	e.Stats.Restored.Add(1)
	svc.countSession()
	return true
}

// counted returns the configured real server at addr, counting one more
// connection to it; nil if there is none.
func (s *Service) counted(addr netip.AddrPort) *RealServer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.countedLocked(addr)
}

// countedLocked is counted with s.mu held. The sorry server counts too:
// connections it took are restored like the others'.
func (s *Service) countedLocked(addr netip.AddrPort) *RealServer {
	for _, rs := range s.Servers {
		if rs.Addr == addr {
			rs.Conns.Add(1)
			rs.Inactive.Add(1)
			return rs
		}
	}
	if rs := s.Sorry; rs != nil && rs.Addr == addr {
		rs.Conns.Add(1)
		rs.Inactive.Add(1)
		return rs
	}
	return nil
}

// resume picks a stream up mid-way: its next data segment is taken to begin
// a line, and off is what earlier rewrites added to it.
func (st *stream) resume(off seqnum.Delta) {
	*st = stream{sync: resuming, base: off, carry: st.carry[:0], edits: st.edits[:0], rel: st.rel[:0]}
}

// resynced starts a resumed stream at a segment's first byte.
func (st *stream) resynced(seq seqnum.Value, payload int, flags uint8) {
	if st.sync == resuming && payload > 0 && flags&(packet.FlagSYN|packet.FlagRST) == 0 {
		st.sync, st.next = synced, seq
	}
}

// total is the offset after every edit so far.
func (st *stream) total() seqnum.Delta {
	if n := len(st.edits); n > 0 {
		return st.edits[n-1].cum
	}
	return st.base
}

// totals are the total offsets of the streams, by Direction.
func (h *helped) totals() [2]seqnum.Delta {
	return [2]seqnum.Delta{h.streams[0].total(), h.streams[1].total()}
}

// offsets reports a changed total offset of c's streams; c.mu is held.
func (c *Conn) offsets(before [2]seqnum.Delta, v *Verdict) {
	now := c.help.totals()
	if now == before || c.help.ended {
		return
	}
	v.Offsets = Offsets{Store: true, Replace: c.help.offsetsStored, Client: c.Client, VIP: c.VIP, Off: [2]int32{int32(now[0]), int32(now[1])}}
	c.help.offsetsStored = true
}

// Ended is what a helped connection that left the table left in the
// kernel: its stream offsets (key client . VIP) and the elements that
// queue its pure ACKs (client . real server; NAT . real server behind the
// user's SNAT). The datapath deletes them (Options.OnEnded); their timeout
// is the backstop for an end the daemon did not see.
type Ended struct {
	Client, VIP, Server, NAT netip.AddrPort
	Offsets, Acks, AcksNAT   bool // which elements to delete
	conn                     *Conn
}

// Unowned returns x without the elements that a connection now in the
// table holds under the same keys: a client port reused by a newer
// connection (to the same VIP, or the same server) whose own element must
// stay. Call it in the goroutine that adds elements, just before deleting
// x's: a connection that asks for an element after this check has it added
// after the deletion.
func (e *Engine) Unowned(x Ended) Ended {
	holds := func(c *Conn, acks bool) bool {
		if c == nil || c == x.conn {
			return false
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.help == nil {
			return false
		}
		if acks {
			return c.help.acksQueued
		}
		return c.help.offsetsStored
	}
	if x.Offsets && holds(e.Table.get(x.Client, x.VIP), false) {
		x.Offsets = false
	}
	if x.Acks && holds(e.Table.get(x.Client, x.Server), true) {
		x.Acks = false
	}
	if x.AcksNAT && holds(e.Table.get(x.NAT, x.Server), true) {
		x.AcksNAT = false
	}
	return x
}

// HelperStates calls f with every helped connection whose helper keeps a
// state word other than zero (StateSaver): what a process handing over to
// its successor passes on, so that a reply to a command it saw is still
// rewritten. Call it with no packet in flight.
func (e *Engine) HelperStates(f func(client, vip netip.AddrPort, w uint64)) {
	e.Table.each(func(c *Conn) {
		c.mu.Lock()
		var w uint64
		if c.help != nil {
			if s, ok := c.help.helper.(StateSaver); ok {
				w = s.SaveState()
			}
		}
		c.mu.Unlock()
		if w != 0 {
			f(c.Client, c.VIP, w)
		}
	})
}

// LoadHelperState gives the helper of the connection from client to vip
// the state word w; false if there is no such helped connection.
func (e *Engine) LoadHelperState(client, vip netip.AddrPort, w uint64) bool {
	c := e.Table.LookupVIP(client, vip)
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.help == nil {
		return false
	}
	s, ok := c.help.helper.(StateSaver)
	if ok {
		s.LoadState(w)
	}
	return ok
}
