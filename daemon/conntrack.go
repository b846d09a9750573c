package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
	"github.com/nfhelper/nfhelper/nft"
)

// conntrackFollower hands conntrack's events to the engine, which keeps no
// conntrack socket of its own.
type conntrackFollower struct {
	engine *ipvs.Engine
	// used, where set, is told of each data channel whose data connection
	// started, for the datapath to delete its kernel elements (the compat
	// datapath: the kernel removes an expectation itself when it
	// matches). It must not block.
	used func(ipvs.Channel)
	// adopt, where set, is told of each new established TCP connection
	// the daemon follows (nft.FollowMark) with its labels: one conntrackd
	// created on this backup router, which the engine may not hold. It
	// must not block.
	adopt func(client, vip, server netip.AddrPort, labels []byte)
	// netns is the network namespace to follow (a file descriptor); 0:
	// the daemon's own.
	netns int
}

// followEnds removes connections from the engine's table as soon as the
// kernel destroys their conntrack entry (closed and timed out, flushed,
// deleted by hand) instead of when their own timeout runs out, and ends
// data channels as soon as conntrack confirms their data connection
// (Engine.ChannelUsed). It returns when ctx ends, or with an error when the
// event socket fails.
func (f *conntrackFollower) followEnds(ctx context.Context) error {
	return f.follow(ctx, netfilter.GroupCTDestroy, netfilter.GroupCTNew)
}

// followStates gives balanced connections without a helper, whose packets
// after the SYN are never queued, the TCP state of their conntrack entry,
// which the least-connection schedulers weigh. Several events per
// connection: run it only while Engine.NeedsConntrackStates.
func (f *conntrackFollower) followStates(ctx context.Context) error {
	return f.follow(ctx, netfilter.GroupCTUpdate)
}

func (f *conntrackFollower) follow(ctx context.Context, groups ...netfilter.NetlinkGroup) error {
	c, err := dialEvents(f.netns, groups)
	if err != nil {
		return fmt.Errorf("conntrack events: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	for {
		msgs, err := c.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("conntrack events: %w", err)
		}
		for _, m := range msgs {
			var ev conntrack.Event
			if err := ev.Unmarshal(m); err != nil {
				return fmt.Errorf("conntrack events: %w", err)
			}
			f.handle(ev)
		}
	}
}

// dialEvents opens a ctnetlink socket in netns that receives groups'
// events, filtered (eventFilter) before it joins them: no unfiltered event
// gets in. conntrack.Conn has no filter of its own.
func dialEvents(netns int, groups []netfilter.NetlinkGroup) (*netlink.Conn, error) {
	filter, err := assembledEventFilter()
	if err != nil {
		return nil, err
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return nil, err
	}
	// A full socket buffer loses events (the table's timeouts catch
	// those, and the engine's idle check a helped connection's); it must
	// not end the listener.
	err = errors.Join(c.SetOption(netlink.NoENOBUFS, true), c.SetReadBuffer(4<<20), c.SetBPF(filter))
	for _, g := range groups {
		if err == nil {
			err = c.JoinGroup(uint32(g))
		}
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// handle hands one event to the engine.
func (f *conntrackFollower) handle(ev conntrack.Event) {
	if ev.Flow == nil {
		return
	}
	t := ev.Flow.TupleOrig
	tcp := t.Proto.Protocol == unix.IPPROTO_TCP
	client := netip.AddrPortFrom(t.IP.SourceAddress.Unmap(), t.Proto.SourcePort)
	dst := netip.AddrPortFrom(t.IP.DestinationAddress.Unmap(), t.Proto.DestinationPort)
	switch {
	case ev.Type == conntrack.EventDestroy && (tcp || t.Proto.Protocol == unix.IPPROTO_UDP):
		orig, reply := ev.Flow.CountersOrig, ev.Flow.CountersReply
		f.engine.ConntrackDestroyed(!tcp, client, dst, orig.Packets+reply.Packets, orig.Bytes+reply.Bytes)
	case !tcp && ev.Type == conntrack.EventNew && ev.Flow.Mark&nft.ChannelMark != 0:
		// A reply flow (TFTP transfer) a request let its server start:
		// server -> client (as the server sees it), answered to the VIP.
		r := ev.Flow.TupleReply
		f.engine.ReplyStarted(client, dst, netip.AddrPortFrom(r.IP.SourceAddress.Unmap(), r.Proto.SourcePort),
			netip.AddrPortFrom(r.IP.DestinationAddress.Unmap(), r.Proto.DestinationPort))
	case !tcp:
	case ev.Type == conntrack.EventNew && ev.Flow.Mark&nft.FollowMark != 0 && f.adopt != nil &&
		ev.Flow.ProtoInfo.TCP != nil && kernel.CtTCPState(ev.Flow.ProtoInfo.TCP.State) == kernel.CtTCPEstablished:
		// Born established: conntrackd's commit of an entry another
		// router balanced (a connection's own first event is at its SYN).
		r := ev.Flow.TupleReply
		f.adopt(client, dst, netip.AddrPortFrom(r.IP.SourceAddress.Unmap(), r.Proto.SourcePort), ev.Flow.Labels)
	case ev.Type == conntrack.EventNew && ev.Flow.Mark&nft.ChannelMark != 0:
		// A data connection of one of the daemon's channels.
		r := ev.Flow.TupleReply
		ch, ok := f.engine.ChannelUsed(client.Addr(), dst, netip.AddrPortFrom(r.IP.SourceAddress.Unmap(), r.Proto.SourcePort))
		if ok && f.used != nil {
			f.used(ch)
		}
	case ev.Type == conntrack.EventUpdate && ev.Flow.ProtoInfo.TCP != nil:
		f.engine.ConntrackUpdated(client, dst, engineState(kernel.CtTCPState(ev.Flow.ProtoInfo.TCP.State)))
	}
}

// engineState is the engine's coarser view of conntrack's TCP state.
func engineState(s kernel.CtTCPState) ipvs.TCPState {
	switch {
	case s < kernel.CtTCPEstablished:
		return ipvs.StateSynSent
	case s == kernel.CtTCPEstablished:
		return ipvs.StateEstablished
	case s == kernel.CtTCPClose:
		return ipvs.StateClose
	}
	return ipvs.StateFinWait
}

// conntrackAlive asks the kernel about connections' entries: whether
// conntrack holds one, by its original tuple (client -> VIP, or the
// add-on's match), the engine's Options.Alive; and where one went, by its
// reply tuple, the engine's Options.OriginalDst. It dials its socket at the
// first question and keeps it; close ends it. Questions are serialized.
type conntrackAlive struct {
	mu    sync.Mutex
	conn  *conntrack.Conn
	netns int // as conntrackFollower's
}

func (a *conntrackAlive) alive(client, vip netip.AddrPort) (bool, error) {
	f := conntrack.NewFlow(unix.IPPROTO_TCP, 0, client.Addr(), vip.Addr(), client.Port(), vip.Port(), 0, 0)
	_, err := a.get(f)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ENOENT):
		return false, nil
	}
	return false, err
}

// originalDst is the original destination of the TCP connection whose
// reply direction is server -> client.
func (a *conntrackAlive) originalDst(server, client netip.AddrPort) (netip.AddrPort, error) {
	f := conntrack.Flow{TupleReply: conntrack.Tuple{
		IP:    conntrack.IPTuple{SourceAddress: server.Addr().Unmap(), DestinationAddress: client.Addr().Unmap()},
		Proto: conntrack.ProtoTuple{Protocol: unix.IPPROTO_TCP, SourcePort: server.Port(), DestinationPort: client.Port()},
	}}
	got, err := a.get(f)
	if err != nil {
		return netip.AddrPort{}, err
	}
	t := got.TupleOrig
	return netip.AddrPortFrom(t.IP.DestinationAddress.Unmap(), t.Proto.DestinationPort), nil
}

// get is conntrack's entry for f's tuple.
func (a *conntrackAlive) get(f conntrack.Flow) (conntrack.Flow, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.conn == nil {
		conn, err := conntrack.Dial(&netlink.Config{NetNS: a.netns})
		if err != nil {
			return conntrack.Flow{}, fmt.Errorf("conntrack: %w", err)
		}
		a.conn = conn
	}
	return a.conn.Get(f)
}

func (a *conntrackAlive) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.conn != nil {
		a.conn.Close()
		a.conn = nil
	}
}
