package ipvs

import (
	"net/netip"
	"slices"

	"github.com/nfhelper/nfhelper/nfq/seqnum"
)

// Helped connections of kernel-scheduled services (KernelScheduled):
// nftables schedules their SYN, so the daemon first sees such a connection
// later and picks it up there. The compat datapath: the server's SYN-ACK,
// queued before conntrack (pickUpSynAck). The kernel datapath: the SYN after
// NAT, whose conntrack entry the daemon hands over (PickUpKernel).

// serverPickups are the helped kernel-scheduled services that hold one real
// server address (or have it as sorry server).
type serverPickups struct {
	svcs []*Service
	// shared: more than one TCP service holds the address, so a SYN-ACK
	// alone does not tell which VIP its client asked for.
	shared bool
}

// pickupsOf indexes services by the real server addresses of their helped
// kernel-scheduled ones.
func pickupsOf(services []*Service) map[netip.AddrPort]*serverPickups {
	holders := map[netip.AddrPort]int{}
	out := map[netip.AddrPort]*serverPickups{}
	for _, s := range services {
		if s.AddOn || s.UDP {
			continue
		}
		picked := s.Helper != nil && KernelScheduled(SchedulerName(s.sched))
		for _, addr := range s.addrs() {
			holders[addr]++
			if !picked {
				continue
			}
			if out[addr] == nil {
				out[addr] = &serverPickups{}
			}
			out[addr].svcs = append(out[addr].svcs, s)
		}
	}
	for addr, p := range out {
		p.shared = holders[addr] > 1
	}
	return out
}

// addrs are the addresses of the service's real servers and sorry server,
// each once.
func (s *Service) addrs() []netip.AddrPort {
	var out []netip.AddrPort
	for _, rs := range s.Servers {
		if !slices.Contains(out, rs.Addr) {
			out = append(out, rs.Addr)
		}
	}
	if s.Sorry != nil && !slices.Contains(out, s.Sorry.Addr) {
		out = append(out, s.Sorry.Addr)
	}
	return out
}

// pickUpSynAck returns the connection the SYN-ACK being processed, from
// server (one of p's) to client, belongs to: c, as the table found it in
// direction dir, where the SYN-ACK answers c's SYN; else a connection
// picked up now, or nil where its service is none of p's (the SYN-ACK then
// passes untouched). Compat datapath only.
func (w *Worker) pickUpSynAck(p *serverPickups, c *Conn, dir Direction, server, client netip.AddrPort) *Conn {
	e := w.e
	ack := seqnum.Value(w.in.TCP().Ack())
	if dir != FromServer {
		c = nil // one whose client is server's address
	}
	if c != nil {
		if c.answers(ack) {
			return c
		}
		e.Table.Remove(c) // a new handshake on its ports: it is over
	}
	svc := e.whose(p, server, client)
	if svc == nil {
		return nil
	}
	n := e.pickUp(svc, client, server)
	if n != nil {
		n.startClient(ack.Shift(-1))
	}
	return n
}

// whose returns the service of p whose VIP the connection from client
// that server answers went to, asking conntrack where p is shared; nil if
// none.
func (e *Engine) whose(p *serverPickups, server, client netip.AddrPort) *Service {
	if !p.shared {
		return p.svcs[0]
	}
	if e.originalDst == nil {
		e.Stats.PickupUnresolved.Add(1)
		return nil
	}
	vip, err := e.originalDst(server, client)
	if err != nil {
		e.Stats.PickupUnresolved.Add(1)
		return nil
	}
	for _, s := range p.svcs {
		if s.VIP == vip {
			return s
		}
	}
	return nil // another service's connection
}

// PickUpKernel picks up the connection, original direction client -> vip,
// answered by server, whose conntrack entry came with its first packet to
// the helper's queue (kernel datapath: the SYN, after NAT) and carries no
// state of the daemon's yet: nftables scheduled it. False unless vip is a
// helped kernel-scheduled service holding server. Its streams start at
// their SYNs, the SYN's MSS is lowered when the packet is processed.
func (e *Engine) PickUpKernel(client, vip, server netip.AddrPort) bool {
	snap := e.snap.Load()
	svc, p := snap.services[vip], snap.pickups[server]
	if svc == nil || p == nil || !slices.Contains(p.svcs, svc) {
		return false
	}
	if c := e.Table.LookupVIP(client, vip); c != nil && c.Server == server && c.State() == StateSynSent {
		return true // a retransmitted SYN whose state did not reach the kernel
	}
	return e.pickUp(svc, client, server) != nil
}

// pickUp puts a new connection of svc from client to server in the table,
// counted on its server, in place of any older one on the same ports; nil
// if svc no longer has the server.
func (e *Engine) pickUp(svc *Service, client, server netip.AddrPort) *Conn {
	rs := svc.counted(server)
	if rs == nil {
		return nil
	}
	if old := e.Table.get(client, server); old != nil {
		e.Table.Remove(old)
	}
	c := newConn(Session{Client: client, VIP: svc.VIP, Server: server}, svc, rs)
	e.Table.Insert(c)
	e.Stats.PickedUp.Add(1)
	svc.countSession()
	return c
}

// answers reports whether a SYN-ACK acknowledging ack belongs to c's own
// handshake (sent again, or a late copy): where c's client stream is
// known, ack, the client's ISN+1, lies at most maxGap behind its next
// byte. A new connection on the same ports starts past the old one's
// bytes (TIME_WAIT reuse) or anywhere.
func (c *Conn) answers(ack seqnum.Value) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.help == nil || c.help.streams[FromClient].sync != synced {
		return c.state == StateSynSent
	}
	next := c.help.streams[FromClient].next
	return !ack.After(next) && ack.Size(next) <= maxGap
}
