package daemon

import (
	"runtime"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/health"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/nft"
)

const (
	tableName = "nfhelper"
	// markMask holds the real server's index in the packet mark of a new
	// connection's SYN, from the queue verdict until DNAT has used it.
	markMask = 0x00ff0000
)

// services turns the configuration into engine services (marks unset),
// their real servers in the standings st.
func services(cfg *config.Config, st map[health.Key]standing) []*ipvs.Service {
	var out []*ipvs.Service
	for _, sc := range cfg.Services {
		var helper ipvs.Helper
		var datagram ipvs.DatagramHelper
		if sc.Helper != "" && sc.Protocol == "udp" {
			datagram, _ = ipvs.LookupDatagramHelper(sc.Helper)
		} else if sc.Helper != "" {
			helper, _ = ipvs.LookupHelper(sc.Helper)
		}
		var reals []*ipvs.RealServer
		for _, r := range sc.RealServers {
			s := st[health.Key{Service: sc.Name, Addr: r.Addr}]
			reals = append(reals, &ipvs.RealServer{Addr: r.Addr, Weight: s.weight, Down: s.down})
		}
		// The configuration was validated: the scheduler exists.
		svc, _ := ipvs.NewService(sc.Name, sc.VIPAddr, sc.Scheduler, helper, reals)
		svc.Policy = sc.Policy()
		svc.Policy.ECMP = cfg.ECMP
		svc.UDP, svc.Datagram = sc.Protocol == "udp", datagram
		if p := sc.Persistence; p != nil {
			v4, v6 := p.Prefixes()
			svc.Persist = ipvs.NewPersistence(p.Timeout, v4, v6)
		}
		if addr, ok := sc.SorryAddr(); ok {
			svc.Sorry = &ipvs.RealServer{Addr: addr, Weight: 1, Sorry: true}
		}
		out = append(out, svc)
	}
	for _, ac := range cfg.Helpers {
		var svc *ipvs.Service
		if ac.Match.Protocol == "udp" {
			svc = ipvs.NewAddOn(ac.Name, ac.MatchAddr, nil, 0)
			svc.UDP = true
			svc.Datagram, _ = ipvs.LookupDatagramHelper(ac.Helper)
		} else {
			helper, _ := ipvs.LookupHelper(ac.Helper)
			svc = ipvs.NewAddOn(ac.Name, ac.MatchAddr, helper, 0)
		}
		svc.Policy = ac.Policy()
		out = append(out, svc)
	}
	return out
}

// specFor is the ruleset for services whose marks the engine assigned.
// Weights come from the standings st, not from the engine: a reload's new
// weights reach the servers the engine keeps only at its commit, after the
// kernel's part. A down server gets weight 0 (the fail-open map does not
// name it) and Down (its persistence templates go).
func specFor(cfg *config.Config, services []*ipvs.Service, st map[health.Key]standing) *nft.Spec {
	q := cfg.Queue
	spec := &nft.Spec{Table: tableName, QueueNum: 100, QueueTotal: uint16(runtime.NumCPU()), MarkMask: markMask, ECMP: cfg.ECMP}
	if q.First != 0 {
		spec.QueueNum = q.First
	}
	if q.Count != 0 {
		spec.QueueTotal = q.Count
	}
	configured := map[string]*config.Service{}
	for i := range cfg.Services {
		configured[cfg.Services[i].Name] = &cfg.Services[i]
	}
	for _, svc := range services {
		if svc.AddOn {
			ad := nft.AddOn{Match: svc.VIP, Mark: svc.Mark, UDP: svc.UDP}
			if svc.Datagram != nil {
				ad.Replies = svc.Policy.ChannelTimeout
			}
			spec.AddOns = append(spec.AddOns, ad)
			continue
		}
		ns := nft.Service{VIP: svc.VIP, UDP: svc.UDP, Helped: svc.Helper != nil}
		for _, rs := range svc.Servers {
			s := st[health.Key{Service: svc.Name, Addr: rs.Addr}]
			w := s.weight
			if s.down {
				w = 0
			}
			ns.Servers = append(ns.Servers, nft.Server{Addr: rs.Addr, Mark: rs.Mark, Weight: w, Down: s.down})
		}
		if rs := svc.Sorry; rs != nil {
			ns.Sorry = &nft.Server{Addr: rs.Addr, Mark: rs.Mark, Weight: 1}
		}
		if sc := configured[svc.Name]; sc != nil && svc.InKernel() {
			ns.Kernel = kernelSched(sc, st)
		}
		if svc.Datagram != nil {
			ns.Replies = svc.Policy.ChannelTimeout
		}
		spec.Services = append(spec.Services, ns)
	}
	return spec
}

// slotKeys are the kernel's hash inputs for the tables' keys.
var slotKeys = map[ipvs.KernelKey]nft.SlotKey{
	ipvs.KeyCounter: nft.ByCounter, ipvs.KeySource: nft.BySource, ipvs.KeySourcePort: nft.BySourcePort,
}

// kernelSched is a kernel-scheduled service's table over its real servers
// in their standings st. No server available: no slots (nft fills them with
// the sorry server, if any).
func kernelSched(sc *config.Service, st map[health.Key]standing) *nft.KernelSched {
	reals := make([]*ipvs.RealServer, len(sc.RealServers))
	for i, r := range sc.RealServers {
		s := st[health.Key{Service: sc.Name, Addr: r.Addr}]
		reals[i] = &ipvs.RealServer{Addr: r.Addr, Weight: s.weight, Down: s.down}
	}
	t := ipvs.BuildKernelTable(sc.Scheduler, reals, ipvs.KernelTableOptions{MHSize: sc.MHSize(), SHPort: sc.SHPort})
	k := &nft.KernelSched{By: slotKeys[t.By], Size: t.Size}
	for _, run := range t.Runs {
		k.Slots = append(k.Slots, nft.SlotRun{First: run.First, Last: run.Last, Server: reals[run.Server].Addr})
	}
	if p := sc.Persistence; p != nil {
		v4, v6 := p.Prefixes()
		k.Persist = &nft.Persist{Timeout: p.Timeout, Prefix4: v4, Prefix6: v6}
	}
	return k
}
