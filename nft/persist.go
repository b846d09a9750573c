package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/google/nftables"
)

// persistPrefix starts the names of persistence maps, which the packet
// path fills and Install carries.
const persistPrefix = "persist_"

// expiryMargin: a template this close to its end is left to expire. A
// delete of one that expired before the batch arrives fails the whole
// batch; the sweep after it catches one a client renewed meanwhile.
const expiryMargin = time.Second

// Templates counts the live persistence templates of a kernel-scheduled
// service; 0 for one without persistence.
func (rs *Ruleset) Templates(c *nftables.Conn, vip netip.AddrPort, udp bool) (int, error) {
	rs.mu.Lock()
	ks := rs.kern[kernelID(vip, udp)]
	rs.mu.Unlock()
	if ks == nil || ks.persist == nil {
		return 0, nil
	}
	els, err := c.GetSetElements(ks.persist)
	if err != nil {
		return 0, fmt.Errorf("read set %s: %w", ks.persist.Name, err)
	}
	n := 0
	for _, e := range els {
		if e.Expires > 0 {
			n++
		}
	}
	return n, nil
}

// deadTemplates lists, by service, the templates that name servers an
// update takes away (down or gone), to be deleted in its batch. Only maps
// whose service loses a server are read.
func (rs *Ruleset) deadTemplates(c *nftables.Conn, spec *Spec) (map[string][]nftables.SetElement, error) {
	dead := map[string][]nftables.SetElement{}
	for i := range spec.Services {
		svc := &spec.Services[i]
		id := kernelID(svc.VIP, svc.UDP)
		old := rs.kern[id]
		if svc.Kernel == nil || svc.Kernel.Persist == nil || old == nil || old.persist == nil || !losesServer(old.keep, svc) {
			continue
		}
		els, err := staleTemplates(c, old.persist, keepServers(svc), expiryMargin)
		if err != nil {
			return nil, err
		}
		dead[id] = els
	}
	return dead, nil
}

func losesServer(kept map[netip.AddrPort]bool, svc *Service) bool {
	keep := keepServers(svc)
	for s := range kept {
		if !keep[s] {
			return true
		}
	}
	return false
}

// staleTemplates are the elements of persistence map s naming a server
// not in keep, with at least margin left.
func staleTemplates(c *nftables.Conn, s *nftables.Set, keep map[netip.AddrPort]bool, margin time.Duration) ([]nftables.SetElement, error) {
	els, err := c.GetSetElements(s)
	if err != nil {
		return nil, fmt.Errorf("read set %s: %w", s.Name, err)
	}
	var stale []nftables.SetElement
	for _, e := range els {
		if e.Expires >= margin && !keep[parseAddrPort(e.Val)] {
			stale = append(stale, nftables.SetElement{Key: e.Key})
		}
	}
	return stale, nil
}

// sweepTemplates deletes, after an update's batch, templates of dead
// servers that the packet path wrote or renewed while it was built.
func (rs *Ruleset) sweepTemplates(c *nftables.Conn, dead map[string][]nftables.SetElement) error {
	var all []element
	for id := range dead {
		ks := rs.kern[id]
		if ks == nil || ks.persist == nil {
			continue
		}
		els, err := staleTemplates(c, ks.persist, ks.keep, 0)
		if err != nil {
			return err
		}
		for _, e := range els {
			all = append(all, element{ks.persist, e})
		}
	}
	if len(all) == 0 {
		return nil
	}
	return delPresent(c, all)
}

// carriedTemplates are a stale table's templates of ks (those naming a
// server it keeps).
func carriedTemplates(cr *Carried, ks *kernelSvc) []nftables.SetElement {
	if cr == nil || ks.persist == nil {
		return nil
	}
	var els []nftables.SetElement
	for _, e := range cr.elems[ks.persist.Name] {
		if ks.keep[parseAddrPort(e.Val)] {
			els = append(els, e)
		}
	}
	return els
}

// parseAddrPort reads an address . port map value.
func parseAddrPort(b []byte) netip.AddrPort {
	if len(b) != 8 && len(b) != 20 {
		return netip.AddrPort{}
	}
	a, _ := netip.AddrFromSlice(b[:len(b)-4])
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[len(b)-4:]))
}

func isPersistMap(name string) bool { return strings.HasPrefix(name, persistPrefix) }
