package ctl

import (
	"context"
	"net/netip"
	"time"

	"github.com/nfhelper/nfhelper/ipvs"
)

// Kernel-scheduled services (ipvs.KernelScheduled) hand their connections
// to the kernel alone: the engine's table and counters do not hold them.
// The daemon reads them from conntrack, and their persistence templates
// from the ruleset, when asked (Server.Kernel).

// Who schedules a service's new connections (Service.ScheduledBy).
const (
	ScheduledByKernel = "kernel" // nftables, from the configuration alone
	ScheduledByDaemon = "daemon" // its first packet is queued; the lc family needs the daemon's counts
)

// FlowKey names a kernel-scheduled service: its protocol and VIP.
type FlowKey struct {
	UDP bool
	VIP netip.AddrPort
}

// Flow is a conntrack entry of a kernel-scheduled service: its original
// destination the VIP, Server its reply's source.
type Flow struct {
	UDP                 bool
	Client, VIP, Server netip.AddrPort
	State               ipvs.TCPState // ipvs.StateUDP for UDP
	ExpiresIn           time.Duration
}

// KernelSource reads what only the kernel knows of kernel-scheduled
// services.
type KernelSource interface {
	// Flows are conntrack's entries of services, read now.
	Flows(ctx context.Context, services map[FlowKey]bool) ([]Flow, error)
	// Templates counts a service's live persistence templates.
	Templates(ctx context.Context, service FlowKey) (int, error)
}

// kernelState is what a request shows of kernel-scheduled services: their
// flows by service, and the templates of the persistent ones.
type kernelState struct {
	flows     map[FlowKey][]Flow // nil: not read
	templates map[FlowKey]int    // of those read
	err       error              // the first read that failed
}

// scheduledBy is who schedules v; "" for an add-on (nobody).
func scheduledBy(v *ipvs.ServiceView) string {
	switch {
	case v.AddOn:
		return ""
	case v.InKernel:
		return ScheduledByKernel
	}
	return ScheduledByDaemon
}

// readKernel reads the kernel-scheduled services among views, templates
// only if withTemplates; nil without a KernelSource or such a service.
func (s *Server) readKernel(ctx context.Context, views []ipvs.ServiceView, withTemplates bool) *kernelState {
	keys := map[FlowKey]bool{}
	for i := range views {
		if scheduledBy(&views[i]) == ScheduledByKernel {
			keys[FlowKey{UDP: views[i].UDP, VIP: views[i].VIP}] = true
		}
	}
	if s.Kernel == nil || len(keys) == 0 {
		return nil
	}
	k := &kernelState{templates: map[FlowKey]int{}}
	if flows, err := s.Kernel.Flows(ctx, keys); err != nil {
		k.err = err
	} else {
		k.flows = map[FlowKey][]Flow{}
		for _, f := range flows {
			key := FlowKey{UDP: f.UDP, VIP: f.VIP}
			k.flows[key] = append(k.flows[key], f)
		}
	}
	for i := range views {
		v := &views[i]
		key := FlowKey{UDP: v.UDP, VIP: v.VIP}
		if !withTemplates || !keys[key] || !v.Persistent {
			continue
		}
		if n, err := s.Kernel.Templates(ctx, key); err == nil {
			k.templates[key] = n
		} else if k.err == nil {
			k.err = err
		}
	}
	return k
}

// errText is k's error as a reply carries it.
func (k *kernelState) errText() string {
	if k == nil || k.err == nil {
		return ""
	}
	return k.err.Error()
}

// apply gives a kernel-scheduled service's view its servers' counts from
// conntrack (ESTABLISHED: active, else inactive, as ipvsadm) and its
// templates, those that were read. The engine's Conns, Packets and Bytes
// stay.
func (k *kernelState) apply(svc *Service, v *ipvs.ServiceView) {
	if k == nil || svc.ScheduledBy != ScheduledByKernel {
		return
	}
	key := FlowKey{UDP: v.UDP, VIP: v.VIP}
	if n, ok := k.templates[key]; ok && svc.Persistence != nil {
		svc.Persistence.Templates = n
	}
	if k.flows == nil {
		return
	}
	byServer := map[netip.AddrPort]*RealServer{}
	for i := range svc.Servers {
		rs := &svc.Servers[i]
		rs.Active, rs.Inactive = 0, 0
		byServer[rs.Address] = rs
	}
	for _, f := range k.flows[key] {
		rs := byServer[f.Server]
		switch {
		case rs == nil: // a server the service no longer has
		case f.State == ipvs.StateEstablished:
			rs.Active++
		default:
			rs.Inactive++
		}
	}
}

// conns are the flows of kernel-scheduled services as connections, but
// those the engine's table has (a helped connection it picked up, with
// its channels); views name their services.
func (k *kernelState) conns(views []ipvs.ServiceView, inTable map[connKey]bool) []Conn {
	if k == nil {
		return nil
	}
	var out []Conn
	for i := range views {
		v := &views[i]
		for _, f := range k.flows[FlowKey{UDP: v.UDP, VIP: v.VIP}] {
			if inTable[connKey{f.UDP, f.Client, f.VIP}] {
				continue
			}
			c := Conn{Protocol: "TCP", State: f.State.String(), ExpiresIn: int64(f.ExpiresIn / time.Second),
				Client: f.Client, VIP: f.VIP, Server: f.Server, Service: v.Name, Helper: v.Helper, ScheduledBy: ScheduledByKernel}
			if f.UDP {
				c.Protocol = "UDP"
			}
			out = append(out, c)
		}
	}
	return out
}

// connKey names a connection in the engine's table.
type connKey struct {
	udp         bool
	client, vip netip.AddrPort
}
