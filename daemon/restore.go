package daemon

import (
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/google/nftables"
	"github.com/ti-mo/conntrack"

	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
	"github.com/nfhelper/nfhelper/nft"
)

// restore takes over what a daemon that did not stop cleanly left: the run-
// time elements of its table (kept by the new table) and the connections
// conntrack still holds for the configured services, whose helped streams
// go on with the offsets it recorded. It reads the kernel and changes
// nothing there, so it runs before the queues are bound.
func restore(engine *ipvs.Engine, table string, log *slog.Logger) (*nft.Carried, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	carried, err := nft.ReadStale(c, table)
	if err != nil {
		return nil, err
	}
	if carried == nil {
		return nil, nil
	}
	offsets, acks := carried.Offsets(), carried.Acks()
	ct, err := conntrack.Dial(nil)
	if err != nil {
		return carried, fmt.Errorf("conntrack: %w", err)
	}
	defer ct.Close()
	flows, err := ct.Dump(nil)
	if err != nil {
		return carried, fmt.Errorf("conntrack dump: %w", err)
	}
	n := 0
	live := map[[2]netip.AddrPort]bool{}
	for _, f := range flows {
		if f.TupleOrig.Proto.Protocol != 6 {
			continue
		}
		client := netip.AddrPortFrom(f.TupleOrig.IP.SourceAddress, f.TupleOrig.Proto.SourcePort)
		vip := netip.AddrPortFrom(f.TupleOrig.IP.DestinationAddress, f.TupleOrig.Proto.DestinationPort)
		server := netip.AddrPortFrom(f.TupleReply.IP.SourceAddress, f.TupleReply.Proto.SourcePort)
		var state kernel.CtTCPState
		if f.ProtoInfo.TCP != nil {
			state = kernel.CtTCPState(f.ProtoInfo.TCP.State)
		}
		if state == kernel.CtTCPTimeWait || state == kernel.CtTCPClose {
			continue
		}
		// The kernel's own FTP helper took it while no daemon ran
		// (fail-open): it rewrites that connection, the daemon must not.
		if f.Helper.Name == nft.KernelFTPHelper {
			continue
		}
		established := state == kernel.CtTCPEstablished
		// Its elements are deleted when it ends, as the earlier daemon's
		// would have been.
		if engine.Restore(client, vip, server, established, offsets[[2]netip.AddrPort{client, vip}], acks[[2]netip.AddrPort{client, server}]) {
			n++
			live[[2]netip.AddrPort{client, vip}], live[[2]netip.AddrPort{client, server}] = true, true
		}
	}
	// The elements of connections not taken back are not carried: nothing
	// would delete them.
	carried.KeepConns(live)
	log.Info("took over a stale table", "elements", carried.Len(), "connections", n,
		"offsets", len(carried.Offsets()), "acks", len(carried.Acks()))
	return carried, nil
}
