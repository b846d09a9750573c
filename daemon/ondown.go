package daemon

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// resetConns ends the running connections of a server that went down in a
// service with `on_down: reset` (IPVS's expire_nodest_conn): it deletes
// their conntrack entries, those whose original destination is vip and
// whose reply comes from server. The client's next packet finds no entry
// and no DNAT, and the table's refusal rule answers it with a reset (TCP)
// or port unreachable (UDP); the engine forgets the connections from the
// destroy events. netns is as conntrackFollower's. It returns how many it
// deleted.
func resetConns(netns int, udp bool, vip, server netip.AddrPort) (int, error) {
	c, err := conntrack.Dial(&netlink.Config{NetNS: netns})
	if err != nil {
		return 0, fmt.Errorf("conntrack: %w", err)
	}
	defer c.Close()
	// A dump and a filter here: conntrack filters by mark and zone only.
	flows, err := c.Dump(nil)
	if err != nil {
		return 0, fmt.Errorf("conntrack dump: %w", err)
	}
	proto := uint8(unix.IPPROTO_TCP)
	if udp {
		proto = unix.IPPROTO_UDP
	}
	n := 0
	for _, f := range flows {
		if !balancedTo(f, proto, vip, server) {
			continue
		}
		// The tuples (and zone) name the entry; nothing else of the dump is
		// to be sent back. Both tuples: the library takes the address
		// family from them.
		err := c.Delete(conntrack.Flow{TupleOrig: f.TupleOrig, TupleReply: f.TupleReply, Zone: f.Zone})
		switch {
		case err == nil:
			n++
		case !errors.Is(err, unix.ENOENT): // ended meanwhile: fine
			return n, fmt.Errorf("conntrack delete: %w", err)
		}
	}
	return n, nil
}

// balancedTo tells whether f is a connection of protocol proto to vip that
// the kernel sent to server.
func balancedTo(f conntrack.Flow, proto uint8, vip, server netip.AddrPort) bool {
	o, r := f.TupleOrig, f.TupleReply
	return o.Proto.Protocol == proto &&
		netip.AddrPortFrom(o.IP.DestinationAddress.Unmap(), o.Proto.DestinationPort) == vip &&
		netip.AddrPortFrom(r.IP.SourceAddress.Unmap(), r.Proto.SourcePort) == server
}
