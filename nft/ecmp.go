package nft

import (
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Active/active routers behind ECMP (Spec.ECMP): a client's passive data
// connection may cross a router that never saw its control connection, so
// no channel names its server. For a helped service scheduled by a hash of
// the client's address alone (sh without sh_port, mh), whose table and
// seed are the same on every router with the same file, that router sends
// it where the control connection went: by the service's own slot map,
// address only, the port unchanged (a 229's port is the server's own, and
// a rewritten 227 keeps it unless another claim holds it).

// ecmpFor tells whether svc's data connections follow its hash when no
// channel took them.
func ecmpFor(spec *Spec, svc *Service) bool {
	return spec.ECMP && svc.Helped && !svc.UDP && svc.Kernel != nil && svc.Kernel.By == BySource
}

// ecmpSet maps a VIP address to the chain of the service whose table its
// data connections follow (the first such service on that address).
func (f *family) ecmpSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: f.name("ecmp"), IsMap: true, KeyType: f.addrType(), DataType: nftables.TypeVerdict}
}

func ecmpChainName(id string) string { return "ecmp_" + id }

// ecmpElements are f.ecmp's elements for spec.
func ecmpElements(spec *Spec, f *family) []nftables.SetElement {
	var els []nftables.SetElement
	seen := map[[16]byte]bool{}
	for i := range spec.Services {
		svc := &spec.Services[i]
		a := svc.VIP.Addr().Unmap()
		if !f.of(a) || !ecmpFor(spec, svc) || seen[a.As16()] {
			continue
		}
		seen[a.As16()] = true
		els = append(els, nftables.SetElement{Key: appendAddr(nil, a),
			VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: ecmpChainName(kernelID(svc.VIP, svc.UDP))}})
	}
	return els
}

// ecmpDispatch (last in dstnat): a new TCP connection to an unprivileged
// port of a VIP that no channel, no service and no fail-open element
// took goes to the chain of the VIP's hash-scheduled helped service.
func ecmpDispatch(m famMatch) []expr.Any {
	f := m.f
	out := append(append(append([]expr.Any{}, m.fam...), m.tcp...), dportUnprivileged()...)
	// Another service's port (daemon-scheduled, its SYN unmarked and its
	// fail-open map empty) is refused as before.
	out = append(append(out, m.dst...), lookupNot(f.vips)...)
	out = append(out, addrField(f.v6, false).load(unix.NFT_REG32_00))
	return append(out, &expr.Lookup{SourceRegister: unix.NFT_REG32_00, DestRegister: unix.NFT_REG_VERDICT, IsDestRegSet: true,
		SetName: f.ecmp.Name, SetID: f.ecmp.ID})
}

// declareECMP adds ks's ecmp chain when its shape wants one and it has
// none; a flushed shape flushes it too (its rules name the maps). A chain
// no longer wanted is left for dropECMP, once the map no longer names it.
func (rs *Ruleset) declareECMP(c *nftables.Conn, ks *kernelSvc, id string, flush bool) {
	switch {
	case ks.ecmp != nil && flush:
		c.FlushChain(ks.ecmp)
	case ks.ecmp == nil && ks.shape.ecmp:
		ks.ecmp = c.AddChain(&nftables.Chain{Name: ecmpChainName(id), Table: rs.table})
	}
	if !ks.shape.ecmp {
		ks.ecmp = nil
	}
}

// dropECMP deletes the ecmp chains of the installed services that next
// has not (the service went, or its shape no longer wants one).
func (rs *Ruleset) dropECMP(c *nftables.Conn, next map[string]*kernelSvc) {
	for id, ks := range rs.kern {
		if ks.ecmp != nil && (next[id] == nil || next[id].ecmp == nil) {
			c.FlushChain(ks.ecmp)
			c.DelChain(ks.ecmp)
		}
	}
}

// ecmpRules fill ks's ecmp chain with what its service chain picks, the
// address only: a template's server, else the slot's. The connection is a
// data connection (ChannelMark); it writes no template.
func (rs *Ruleset) ecmpRules(a ruleAdder, ks *kernelSvc) {
	sh, f := ks.shape, ks.f
	fam := nfproto(f.proto)
	a.rule(ks.ecmp, setCtMark(ChannelMark))
	if sh.hasPers {
		a.rule(ks.ecmp, fam, templateKey(f, sh.persist), lookupInto(ks.persist, regServer), natAddrFrom(f, regServer))
	}
	if sh.size > 0 {
		a.rule(ks.ecmp, fam, slotNumber(f, sh.by, sh.size), lookupFrom(ks.slots, regSlot, regServer), natAddrFrom(f, regServer))
	}
}

// natAddrFrom DNATs to the address loaded at reg, the port unchanged.
func natAddrFrom(f *family, reg uint32) []expr.Any {
	return []expr.Any{&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.proto), RegAddrMin: reg}}
}

// ecmpActiveSet maps a real server's active data port (its control port
// less one, RFC 959's L-1: 20 for 21) to the VIP its connections from that
// port come from.
func (f *family) ecmpActiveSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: f.name("ecmp_active"), IsMap: true, Concatenation: true,
		KeyType: f.addrPortType(), DataType: f.addrType()}
}

// ecmpActiveElements: behind ECMP, a server's active data connection
// (PORT, EPRT) leaves by its own gateway, which may be the router that saw
// no channel; from the server's port L-1 it comes from the VIP. Servers of
// helped TCP services on several VIP addresses are left out: which VIP is
// theirs cannot be told (nfhelperctl check warns).
func ecmpActiveElements(spec *Spec, f *family) []nftables.SetElement {
	vips := map[netip.Addr]map[netip.Addr]bool{}
	for _, svc := range spec.Services {
		if !svc.Helped || svc.UDP {
			continue
		}
		for _, s := range svc.Servers {
			a := s.Addr.Addr().Unmap()
			if vips[a] == nil {
				vips[a] = map[netip.Addr]bool{}
			}
			vips[a][svc.VIP.Addr().Unmap()] = true
		}
	}
	var els []nftables.SetElement
	seen := map[netip.AddrPort]bool{}
	for i := range spec.Services {
		svc := &spec.Services[i]
		if !f.of(svc.VIP.Addr()) || !ecmpFor(spec, svc) {
			continue
		}
		for _, s := range svc.Servers {
			a := s.Addr.Addr().Unmap()
			key := netip.AddrPortFrom(a, s.Addr.Port()-1)
			if s.Addr.Port() < 2 || len(vips[a]) > 1 || seen[key] {
				continue
			}
			seen[key] = true
			els = append(els, nftables.SetElement{Key: addrPortKey(key), Val: appendAddr(nil, svc.VIP.Addr())})
		}
	}
	return els
}
