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

	Conns atomic.Uint64 // connections scheduled to it
}

// Service is a virtual TCP service: a VIP, its real servers, how to choose
// between them and which helper reads its payloads.
type Service struct {
	Name    string
	VIP     netip.AddrPort
	Helper  Helper // nil: balanced without payload inspection
	Policy  Policy
	Servers []*RealServer

	mu    sync.Mutex
	sched Scheduler
}

// NewService builds a service with the named scheduler.
func NewService(name string, vip netip.AddrPort, scheduler string, h Helper, servers []*RealServer) (*Service, error) {
	s, err := NewScheduler(scheduler)
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", name, err)
	}
	return &Service{Name: name, VIP: vip, Helper: h, Policy: DefaultPolicy, Servers: servers, sched: s}, nil
}

// Schedule picks the real server for a new connection, or nil when every
// server is quiesced.
func (s *Service) Schedule(client netip.AddrPort) *RealServer {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := s.sched.Pick(s.Servers, client)
	if rs != nil {
		rs.Conns.Add(1)
	}
	return rs
}
