package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
	"github.com/nfhelper/nfhelper/nft"
)

// kernelViews is the control socket's ctl.KernelSource: kernel-scheduled
// connections never reach the daemon, and no event of theirs either (the
// event socket's filter), so nfhelperctl's views of them are read when
// asked: a conntrack dump, and the ruleset's templates.
type kernelViews struct {
	netns   int // as conntrackFollower's
	ruleset *nft.Ruleset
}

// Flows dumps conntrack and keeps the entries of services. ctnetlink
// filters dumps by mark and zone only, which kernel-scheduled connections
// do not have: the whole table is read.
func (k *kernelViews) Flows(_ context.Context, services map[ctl.FlowKey]bool) ([]ctl.Flow, error) {
	c, err := conntrack.Dial(&netlink.Config{NetNS: k.netns})
	if err != nil {
		return nil, fmt.Errorf("conntrack: %w", err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		return nil, fmt.Errorf("conntrack dump: %w", err)
	}
	var out []ctl.Flow
	for i := range flows {
		if f, ok := ctlFlow(&flows[i]); ok && services[ctl.FlowKey{UDP: f.UDP, VIP: f.VIP}] {
			out = append(out, f)
		}
	}
	return out, nil
}

// ctlFlow is a TCP or UDP conntrack entry as the control socket shows it:
// its server the reply's source, its state the engine's coarser one.
func ctlFlow(f *conntrack.Flow) (ctl.Flow, bool) {
	o, r := f.TupleOrig, f.TupleReply
	out := ctl.Flow{
		UDP:       o.Proto.Protocol == unix.IPPROTO_UDP,
		Client:    netip.AddrPortFrom(o.IP.SourceAddress.Unmap(), o.Proto.SourcePort),
		VIP:       netip.AddrPortFrom(o.IP.DestinationAddress.Unmap(), o.Proto.DestinationPort),
		Server:    netip.AddrPortFrom(r.IP.SourceAddress.Unmap(), r.Proto.SourcePort),
		State:     ipvs.StateUDP,
		ExpiresIn: time.Duration(f.Timeout) * time.Second,
	}
	switch {
	case out.UDP:
	case o.Proto.Protocol != unix.IPPROTO_TCP:
		return ctl.Flow{}, false
	case f.ProtoInfo.TCP != nil:
		out.State = engineState(kernel.CtTCPState(f.ProtoInfo.TCP.State))
	default:
		out.State = ipvs.StateSynSent
	}
	return out, true
}

// Templates counts the service's live persistence templates in the
// ruleset, on a connection of its own: the changes' (Daemon.nft) is
// d.mu's.
func (k *kernelViews) Templates(_ context.Context, svc ctl.FlowKey) (int, error) {
	c, err := nftables.New()
	if err != nil {
		return 0, fmt.Errorf("nftables: %w", err)
	}
	return k.ruleset.Templates(c, svc.VIP, svc.UDP)
}
