package ipvs

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
)

// RealServer is one backend of a virtual service.
type RealServer struct {
	Addr   netip.AddrPort
	Weight int    // 0: quiesced, no new connections
	Mark   uint32 // the packet mark bits that make the kernel DNAT to Addr
	// Down: its health check failed or an operator took it out; it gets
	// no new connections whatever its weight. Guarded, as Weight, by the
	// engine's scheduling lock (Engine.SetStanding).
	Down bool
	// Sorry: the service's sorry server (Service.Sorry), not one of its
	// Servers.
	Sorry bool

	Conns atomic.Uint64 // connections scheduled to it
	// Active counts its ESTABLISHED connections, Inactive the others in the
	// table, as ipvsadm's ActiveConn and InActConn; least-connection
	// schedulers weigh them.
	Active, Inactive atomic.Int64
	// Packets and Bytes, both directions, of its connections that ended,
	// as conntrack accounted them (only with net.netfilter.nf_conntrack_acct=1).
	Packets, Bytes atomic.Uint64
}

// Service is a virtual TCP service: a VIP, its real servers, how to choose
// between them and which helper reads its payloads. An add-on service
// schedules nothing: the user's own rules DNAT connections to VIP (its
// match), Mark names it on the queued SYN, and Servers are learned.
type Service struct {
	Name    string
	VIP     netip.AddrPort
	Helper  Helper // nil: balanced without payload inspection
	Policy  Policy
	Servers []*RealServer
	AddOn   bool
	Mark    uint32
	UDP     bool // a UDP service: flows are scheduled, their streams never read
	// Datagram, for a UDP service, reads the requests its flows start
	// with (Helper stays nil).
	Datagram DatagramHelper
	// Persist, if set, sends a client back to the server it had last
	// (IPVS persistence, -p).
	Persist *Persistence
	// Sorry, if set, takes the new connections when no server of Servers
	// can (all down or quiesced); it is never remembered by Persist.
	Sorry *RealServer

	// mu guards Servers, their weights and the scheduler's state. The engine
	// gives all its services one lock: a reload changes the weights of real
	// servers that services of older generations still hold.
	mu    *sync.Mutex
	sched Scheduler
	// helperStats are its helper's counters (nil without one), set when
	// the engine takes the service on, for the workers to count into.
	helperStats *HelperStats
}

// NewService builds a service with the named scheduler.
func NewService(name string, vip netip.AddrPort, scheduler string, h Helper, servers []*RealServer) (*Service, error) {
	s, err := NewScheduler(scheduler)
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", name, err)
	}
	return &Service{Name: name, VIP: vip, Helper: h, Policy: DefaultPolicy, Servers: servers, sched: s, mu: new(sync.Mutex)}, nil
}

// NewAddOn builds an add-on service: helper h reads connections to match,
// which the user's rules translate; their SYN carries mark.
func NewAddOn(name string, match netip.AddrPort, h Helper, mark uint32) *Service {
	return &Service{Name: name, VIP: match, Helper: h, Policy: DefaultPolicy, AddOn: true, Mark: mark, mu: new(sync.Mutex)}
}

// InKernel reports whether nftables schedules the service's new
// connections: a kernel-capable scheduler, and nothing that needs the
// first packet (an add-on's SYN, a datagram helper's request).
func (s *Service) InKernel() bool {
	return !s.AddOn && s.Datagram == nil && KernelScheduled(SchedulerName(s.sched))
}

// bind returns a new connection's helper state; nil without a helper.
func (s *Service) bind(sess *Session) ConnHelper {
	if s.Helper == nil {
		return nil
	}
	p := s.Policy
	return s.Helper.Bind(sess, &p)
}

// policy is the service's data-channel policy. A reload builds new services
// rather than change a running one's, so this needs no lock.
func (s *Service) policy() *Policy { return &s.Policy }

// learn returns the real server at addr, added on first sight.
func (s *Service) learn(addr netip.AddrPort) *RealServer {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rs := s.countedLocked(addr); rs != nil {
		return rs
	}
	rs := &RealServer{Addr: addr, Weight: 1}
	rs.Conns.Add(1)
	rs.Inactive.Add(1)
	s.Servers = append(s.Servers, rs)
	return rs
}

// Schedule picks the real server for a new connection: one of Servers,
// else the sorry server when none of them can take it, else nil.
func (s *Service) Schedule(client netip.AddrPort) *RealServer {
	s.mu.Lock()
	defer s.mu.Unlock()
	var rs *RealServer
	at := now()
	if s.Persist != nil {
		rs = s.Persist.Lookup(client.Addr(), at)
	}
	if rs == nil {
		rs = s.sched.Pick(s.Servers, client)
		if rs != nil && s.Persist != nil {
			s.Persist.Remember(client.Addr(), rs, at)
		}
	}
	if rs == nil && s.Sorry != nil && !s.Sorry.Down && !anyAvailable(s.Servers) {
		rs = s.Sorry
	}
	if rs != nil {
		rs.Conns.Add(1)
		rs.Inactive.Add(1)
	}
	return rs
}
