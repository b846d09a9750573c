package ipvs

import (
	"net/netip"

	"github.com/nfhelper/nfhelper/nfq/seqnum"
)

// A backup router's daemon finds connections its engine never saw: the
// master balanced them, and conntrackd put their entries (NAT, mark,
// labels, seqadj) into this router's conntrack at the switch. Such a
// connection is adopted mid-stream: its streams pick up at their next data
// segment with the offsets the entry carries, resynchronising on a line
// boundary, and its helper, whose state was not carried, is told so
// (Adoptable).

// Adoptable is a ConnHelper that can pick a connection up mid-stream:
// neither where its streams' lines begin nor which commands await their
// reply is known.
type Adoptable interface {
	// Adopted is called once, before the first Inspect. The first bytes
	// of each direction may lie inside a line; replies to commands sent
	// before are to be taken as answering them.
	Adopted()
}

// Adopt takes up an established helped connection (client -> vip,
// answered by server) that the engine does not hold, with off the
// offsets its streams carry (by Direction). It returns the connection's
// service; nil when it is already held, or no running helped service and
// server match.
func (e *Engine) Adopt(client, vip, server netip.AddrPort, off [2]int32) *Service {
	svc := e.snap.Load().services[vip]
	if svc == nil || svc.Helper == nil || e.Table.LookupVIP(client, vip) != nil {
		return nil
	}
	rs := svc.counted(server)
	if rs == nil {
		return nil
	}
	c := newConn(Session{Client: client, VIP: vip, Server: server}, svc, rs)
	c.setState(StateEstablished, c.seen)
	for d := range c.help.streams {
		c.help.streams[d].resume(seqnum.Delta(off[d]))
	}
	c.help.offsetsStored = off != [2]int32{}
	if a, ok := c.help.helper.(Adoptable); ok {
		a.Adopted()
	}
	e.Table.Insert(c)
	e.Stats.AdoptedMidstream.Add(1)
	svc.countSession()
	return svc
}

// Helped reports whether vip is a helped service's VIP holding server:
// a connection between them is one Adopt would take.
func (e *Engine) Helped(vip, server netip.AddrPort) bool {
	svc := e.snap.Load().services[vip]
	return svc != nil && svc.Helper != nil && svc.has(server)
}

// has reports whether server is one of s's real servers or its sorry
// server.
func (s *Service) has(server netip.AddrPort) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rs := range s.Servers {
		if rs.Addr == server {
			return true
		}
	}
	return s.Sorry != nil && s.Sorry.Addr == server
}
