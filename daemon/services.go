package daemon

import (
	"net/netip"
	"runtime"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/nft"
)

const (
	tableName = "nfhelper"
	// markMask holds the real server's index in the packet mark of a new
	// connection's SYN, from the queue verdict until DNAT has used it.
	markMask = 0x00ff0000
)

// services turns the configuration into engine services (marks unset).
func services(cfg *config.Config) []*ipvs.Service {
	var out []*ipvs.Service
	for _, sc := range cfg.Services {
		var helper ipvs.Helper
		if sc.Helper != "" {
			helper, _ = ipvs.LookupHelper(sc.Helper)
		}
		var reals []*ipvs.RealServer
		for _, r := range sc.RealServers {
			reals = append(reals, &ipvs.RealServer{Addr: r.Addr, Weight: r.EffectiveWeight()})
		}
		// The configuration was validated: the scheduler exists.
		svc, _ := ipvs.NewService(sc.Name, sc.VIPAddr, sc.Scheduler, helper, reals)
		svc.Policy = sc.Policy()
		svc.UDP = sc.Protocol == "udp"
		if p := sc.Persistence; p != nil {
			v4, v6 := p.Prefixes()
			svc.Persist = ipvs.NewPersistence(p.Timeout, v4, v6)
		}
		out = append(out, svc)
	}
	for _, ac := range cfg.Helpers {
		helper, _ := ipvs.LookupHelper(ac.Helper)
		svc := ipvs.NewAddOn(ac.Name, ac.MatchAddr, helper, 0)
		svc.Policy = ac.Policy()
		out = append(out, svc)
	}
	return out
}

// specFor is the ruleset for services whose marks the engine assigned.
// Weights come from the file: a reload's new weights reach the servers the
// engine keeps only at its commit, after the kernel's part.
func specFor(cfg *config.Config, services []*ipvs.Service) *nft.Spec {
	type serverKey struct {
		udp       bool
		vip, addr netip.AddrPort
	}
	weights := map[serverKey]int{}
	for _, sc := range cfg.Services {
		for _, r := range sc.RealServers {
			weights[serverKey{sc.Protocol == "udp", sc.VIPAddr, r.Addr}] = r.EffectiveWeight()
		}
	}
	q := cfg.Queue
	spec := &nft.Spec{Table: tableName, QueueNum: 100, QueueTotal: uint16(runtime.NumCPU()), MarkMask: markMask}
	if q.First != 0 {
		spec.QueueNum = q.First
	}
	if q.Count != 0 {
		spec.QueueTotal = q.Count
	}
	for _, svc := range services {
		if svc.AddOn {
			spec.AddOns = append(spec.AddOns, nft.AddOn{Match: svc.VIP, Mark: svc.Mark})
			continue
		}
		ns := nft.Service{VIP: svc.VIP, UDP: svc.UDP, Helped: svc.Helper != nil}
		for _, rs := range svc.Servers {
			ns.Servers = append(ns.Servers, nft.Server{Addr: rs.Addr, Mark: rs.Mark, Weight: weights[serverKey{svc.UDP, svc.VIP, rs.Addr}]})
		}
		spec.Services = append(spec.Services, ns)
	}
	return spec
}
