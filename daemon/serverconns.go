package daemon

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
)

// What conntrack holds of one real server's connections: on_down reset
// ends them, a drain learns their states.

// eachFlow calls f, with its conntrack connection, for each conntrack entry
// of protocol proto whose original destination is vip and whose reply
// comes from server: the connections the kernel balanced to server. netns
// is as conntrackFollower's.
func eachFlow(netns int, proto uint8, vip, server netip.AddrPort, f func(*conntrack.Conn, conntrack.Flow) error) error {
	c, err := conntrack.Dial(&netlink.Config{NetNS: netns})
	if err != nil {
		return fmt.Errorf("conntrack: %w", err)
	}
	defer c.Close()
	// A dump and a filter here: conntrack filters by mark and zone only.
	flows, err := c.Dump(nil)
	if err != nil {
		return fmt.Errorf("conntrack dump: %w", err)
	}
	for _, fl := range flows {
		if balancedTo(fl, proto, vip, server) {
			if err := f(c, fl); err != nil {
				return err
			}
		}
	}
	return nil
}

// balancedTo tells whether f is a connection of protocol proto to vip that
// the kernel sent to server.
func balancedTo(f conntrack.Flow, proto uint8, vip, server netip.AddrPort) bool {
	o, r := f.TupleOrig, f.TupleReply
	return o.Proto.Protocol == proto &&
		netip.AddrPortFrom(o.IP.DestinationAddress.Unmap(), o.Proto.DestinationPort) == vip &&
		netip.AddrPortFrom(r.IP.SourceAddress.Unmap(), r.Proto.SourcePort) == server
}

// resetConns ends the running connections of a server that went down in a
// service with `on_down: reset` (IPVS's expire_nodest_conn): it deletes
// their conntrack entries. The client's next packet finds no entry and no
// DNAT, and the table's refusal rule answers it with a reset (TCP) or port
// unreachable (UDP); the engine forgets the connections from the destroy
// events. It returns how many it deleted.
func resetConns(netns int, udp bool, vip, server netip.AddrPort) (int, error) {
	proto := uint8(unix.IPPROTO_TCP)
	if udp {
		proto = unix.IPPROTO_UDP
	}
	n := 0
	err := eachFlow(netns, proto, vip, server, func(c *conntrack.Conn, f conntrack.Flow) error {
		// The tuples (and zone) name the entry; nothing else of the dump
		// is to be sent back. Both tuples: the library takes the address
		// family from them.
		err := c.Delete(conntrack.Flow{TupleOrig: f.TupleOrig, TupleReply: f.TupleReply, Zone: f.Zone})
		switch {
		case err == nil:
			n++
		case !errors.Is(err, unix.ENOENT): // ended meanwhile: fine
			return fmt.Errorf("conntrack delete: %w", err)
		}
		return nil
	})
	return n, err
}

// syncStates gives the engine the TCP state conntrack holds for each of a
// server's balanced TCP connections. A drain needs it: without a
// least-connection scheduler nobody follows the states of connections
// without a helper, and all of them count as inactive, established or
// not. From the drain on, the conntrack follower keeps them (adjust).
func syncStates(netns int, engine *ipvs.Engine, vip, server netip.AddrPort) error {
	return eachFlow(netns, unix.IPPROTO_TCP, vip, server, func(_ *conntrack.Conn, f conntrack.Flow) error {
		if f.ProtoInfo.TCP != nil {
			t := f.TupleOrig
			client := netip.AddrPortFrom(t.IP.SourceAddress.Unmap(), t.Proto.SourcePort)
			engine.ConntrackUpdated(client, vip, engineState(kernel.CtTCPState(f.ProtoInfo.TCP.State)))
		}
		return nil
	})
}
