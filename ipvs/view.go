package ipvs

import (
	"net/netip"
	"time"
)

// Read-only views for the control socket: copies taken under the same
// locks the workers use, so that they can be encoded and printed at leisure.

// ServiceView is a copy of a running service.
type ServiceView struct {
	Name      string
	VIP       netip.AddrPort
	UDP       bool
	AddOn     bool
	Scheduler string // IPVS name; empty for an add-on
	InKernel  bool   // nftables schedules it (Service.InKernel)
	Helper    string // empty: balanced without a helper
	Mark      uint32 // add-on: the mark bits of its queued SYNs
	Policy    Policy
	// Persistence, when Persistent: the timeout and the netmask prefixes.
	Persistent           bool
	PersistTimeout       time.Duration
	PersistV4, PersistV6 int
	Templates            int // live persistence templates
	// Servers, then the sorry server if any (Sorry set).
	Servers []RealServerView
}

// RealServerView is a copy of a real server's settings and counters.
type RealServerView struct {
	Addr             netip.AddrPort
	Weight           int
	Mark             uint32
	Down             bool // takes no new connections whatever its weight
	Sorry            bool // the service's sorry server
	Conns            uint64
	Active, Inactive int64
	Packets, Bytes   uint64
}

// ConnView is a copy of a connection table entry.
type ConnView struct {
	Session
	UDP       bool
	Service   string
	Helper    string
	About     string         // what the flow asked for, as its datagram helper read it
	Replies   []ReplyView    // the reply flows its request let the server start
	ClientNAT netip.AddrPort // invalid unless the user's rules SNAT the client (add-on)
	State     TCPState
	ExpiresIn time.Duration // until the entry times out, unless a packet comes
	Channels  []ChannelView // announced data channels, not yet timed out
}

// ReplyView is a reply flow of a datagram helper's request.
type ReplyView struct {
	Server, VIP netip.AddrPort // its two ends as the server and the client see the server
	Age         time.Duration
}

// ChannelView is an announced data channel of a connection.
type ChannelView struct {
	Channel
	ExpiresIn time.Duration
}

// String is the channel kind as a word: passive, active, watch or acks.
func (k ChannelKind) String() string {
	switch k {
	case ChannelPassive:
		return "passive"
	case ChannelActive:
		return "active"
	case ChannelWatch:
		return "watch"
	case ChannelAcks:
		return "acks"
	}
	return "unknown"
}

// SchedulerName returns the IPVS name of a scheduler NewScheduler built.
func SchedulerName(s Scheduler) string {
	switch s.(type) {
	case *roundRobin:
		return "rr"
	case *weightedRoundRobin:
		return "wrr"
	case leastConn:
		return "lc"
	case weightedLeastConn:
		return "wlc"
	case shortestExpectedDelay:
		return "sed"
	case neverQueue:
		return "nq"
	case *sourceHash:
		return "sh"
	case *maglevHash:
		return "mh"
	case nil:
		return ""
	}
	return "?"
}

// View copies the service's settings and its real servers' counters.
func (s *Service) View() ServiceView {
	v := ServiceView{
		Name: s.Name, VIP: s.VIP, UDP: s.UDP, AddOn: s.AddOn, Policy: s.Policy, InKernel: s.InKernel(),
	}
	if s.AddOn {
		v.Mark = s.Mark
	}
	switch {
	case s.Helper != nil:
		v.Helper = s.Helper.Name()
	case s.Datagram != nil:
		v.Helper = s.Datagram.Name()
	}
	if p := s.Persist; p != nil {
		v.Persistent = true
		v.PersistTimeout = time.Duration(p.timeout)
		v.PersistV4, v.PersistV6 = p.v4Bits, p.v6Bits
		v.Templates = p.count()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.AddOn {
		v.Scheduler = SchedulerName(s.sched)
	}
	for _, rs := range s.Servers {
		v.Servers = append(v.Servers, rs.view(false))
	}
	if s.Sorry != nil {
		v.Servers = append(v.Servers, s.Sorry.view(true))
	}
	return v
}

// view copies rs; the caller holds the scheduling lock.
func (rs *RealServer) view(sorry bool) RealServerView {
	return RealServerView{
		Addr: rs.Addr, Weight: rs.Weight, Mark: rs.Mark, Down: rs.Down, Sorry: sorry,
		Conns: rs.Conns.Load(), Active: rs.Active.Load(), Inactive: rs.Inactive.Load(),
		Packets: rs.Packets.Load(), Bytes: rs.Bytes.Load(),
	}
}

// count is the number of live templates.
func (p *Persistence) count() int {
	at, n := now(), 0
	for i := range p.shards {
		sh := &p.shards[i]
		sh.mu.Lock()
		for _, e := range sh.m {
			if e.expires >= at {
				n++
			}
		}
		sh.mu.Unlock()
	}
	return n
}

// ServiceViews copies every running service, in configuration order.
func (e *Engine) ServiceViews() []ServiceView {
	list := e.Services()
	out := make([]ServiceView, 0, len(list))
	for _, s := range list {
		out = append(out, s.View())
	}
	return out
}

// ConnViews copies the connection table, TCP then UDP, unordered.
func (e *Engine) ConnViews() []ConnView {
	var out []ConnView
	at := now()
	for _, t := range []*Table{e.Table, e.UDP} {
		var conns []*Conn
		t.each(func(c *Conn) { conns = append(conns, c) })
		for _, c := range conns {
			out = append(out, c.view(at, t == e.UDP))
		}
	}
	return out
}

// Conns is the number of TCP connections and UDP flows in the table.
func (e *Engine) Conns() int { return e.Table.Len() + e.UDP.Len() }

func (c *Conn) view(at int64, udp bool) ConnView {
	v := ConnView{Session: c.Session, UDP: udp, Service: c.Service.Name}
	if c.Service.Helper != nil && c.help != nil {
		v.Helper = c.Service.Helper.Name()
	}
	if c.Service.Datagram != nil {
		v.Helper = c.Service.Datagram.Name()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	v.State = c.state
	if r := c.reply; r != nil {
		v.About = r.about
		for _, f := range r.flows {
			v.Replies = append(v.Replies, ReplyView{Server: f.Server, VIP: f.VIP, Age: time.Duration(max(at-f.started, 0))})
		}
	}
	v.ExpiresIn = time.Duration(max(c.deadline()-at, 0))
	if c.help == nil {
		return v
	}
	v.ClientNAT = c.help.clientNAT
	for _, o := range c.help.open {
		if o.expires < at {
			continue
		}
		v.Channels = append(v.Channels, ChannelView{Channel: o.ch, ExpiresIn: time.Duration(o.expires - at)})
	}
	return v
}
