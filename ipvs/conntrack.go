package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

// destroyGrace keeps a connection that saw a packet this recently when its
// conntrack entry goes: a SYN that reuses a closed connection's ports makes
// the kernel destroy the old entry just as the new connection starts.
const destroyGrace = 2 * time.Second

// ChannelMark is the conntrack mark bit (nft.ChannelMark) of the data
// connections of the daemon's channels: the datapath sets it (on the kernel
// datapath, on the control connection, whose expected connections inherit
// it).
const ChannelMark = 0x01000000

// FollowConntrackEnds removes connections from the table as soon as the
// kernel destroys their conntrack entry (closed and timed out, flushed,
// deleted by hand) instead of when their own timeout runs out, and ends
// data channels as soon as conntrack confirms their data connection
// (ChannelUsed). It returns when ctx ends, or with an error when the event
// socket fails.
func (e *Engine) FollowConntrackEnds(ctx context.Context) error {
	return e.follow(ctx, netfilter.GroupCTDestroy, netfilter.GroupCTNew)
}

// FollowConntrackStates gives balanced connections without a helper, whose
// packets after the SYN are never queued, the TCP state of their conntrack
// entry, which the least-connection schedulers weigh. Several events per
// connection: run it only while such a scheduler is configured.
func (e *Engine) FollowConntrackStates(ctx context.Context) error {
	return e.follow(ctx, netfilter.GroupCTUpdate)
}

// NeedsConntrackStates reports whether a running service schedules by the
// connection counts that only conntrack's updates keep right.
func (e *Engine) NeedsConntrackStates() bool {
	for _, s := range e.Services() {
		if s.Helper == nil && !s.UDP && !s.AddOn && byLoad(s.sched) {
			return true
		}
	}
	return false
}

func (e *Engine) follow(ctx context.Context, groups ...netfilter.NetlinkGroup) error {
	c, err := conntrack.Dial(nil)
	if err != nil {
		return fmt.Errorf("conntrack events: %w", err)
	}
	defer c.Close()
	// A full socket buffer loses events (the table's timeouts catch
	// those, and checkIdle a helped connection's); it must not end the
	// listener.
	if err := c.SetOption(netlink.NoENOBUFS, true); err != nil {
		return fmt.Errorf("conntrack events: %w", err)
	}
	if err := c.SetReadBuffer(4 << 20); err != nil {
		return fmt.Errorf("conntrack events: %w", err)
	}
	events := make(chan conntrack.Event, 1024)
	errs, err := c.Listen(events, 1, groups)
	if err != nil {
		return fmt.Errorf("conntrack events: %w", err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			return fmt.Errorf("conntrack events: %w", err)
		case ev := <-events:
			switch {
			case ev.Flow == nil:
			case ev.Type == conntrack.EventDestroy:
				e.destroyed(ev.Flow.TupleOrig, ev.Flow.CountersOrig, ev.Flow.CountersReply)
			case ev.Type == conntrack.EventNew:
				if ev.Flow.Mark&ChannelMark != 0 {
					e.started(ev.Flow.TupleOrig, ev.Flow.TupleReply)
				}
			case ev.Type != conntrack.EventUpdate:
			case ev.Flow.ProtoInfo.TCP != nil:
				e.updated(ev.Flow.TupleOrig, ev.Flow.ProtoInfo.TCP.State)
			}
		}
	}
}

// started ends the data channel, if any, that the data connection with
// original tuple t and reply tuple reply used (ChannelUsed).
func (e *Engine) started(t, reply conntrack.Tuple) {
	if t.Proto.Protocol != unix.IPPROTO_TCP {
		return
	}
	ch, ok := e.ChannelUsed(t.IP.SourceAddress.Unmap(), netip.AddrPortFrom(t.IP.DestinationAddress.Unmap(), t.Proto.DestinationPort),
		netip.AddrPortFrom(reply.IP.SourceAddress.Unmap(), reply.Proto.SourcePort))
	if ok && e.OnChannelUsed != nil {
		e.OnChannelUsed(ch)
	}
}

// Conntrack's TCP states (enum tcp_conntrack).
const (
	ctTCPEstablished = 3
	ctTCPClose       = 8
)

// updated takes the TCP state of a connection nobody else tracks from its
// conntrack entry.
func (e *Engine) updated(t conntrack.Tuple, state uint8) {
	if t.Proto.Protocol != unix.IPPROTO_TCP {
		return
	}
	client := netip.AddrPortFrom(t.IP.SourceAddress.Unmap(), t.Proto.SourcePort)
	dst := netip.AddrPortFrom(t.IP.DestinationAddress.Unmap(), t.Proto.DestinationPort)
	c := e.Table.LookupVIP(client, dst)
	if c == nil || c.help != nil {
		return
	}
	next := StateFinWait
	switch {
	case state < ctTCPEstablished:
		next = StateSynSent
	case state == ctTCPEstablished:
		next = StateEstablished
	case state == ctTCPClose:
		next = StateClose
	}
	c.mu.Lock()
	c.setState(next, now())
	c.mu.Unlock()
}

// destroyed handles the end of the conntrack entry with original tuple t
// and its accounting, if any.
func (e *Engine) destroyed(t conntrack.Tuple, counts ...conntrack.Counter) {
	table := e.Table
	switch t.Proto.Protocol {
	case unix.IPPROTO_TCP:
	case unix.IPPROTO_UDP:
		table = e.UDP
	default:
		return
	}
	client := netip.AddrPortFrom(t.IP.SourceAddress.Unmap(), t.Proto.SourcePort)
	dst := netip.AddrPortFrom(t.IP.DestinationAddress.Unmap(), t.Proto.DestinationPort)
	c := table.LookupVIP(client, dst)
	if c == nil {
		return
	}
	c.mu.Lock()
	recent := now()-c.seen < int64(destroyGrace)
	c.mu.Unlock()
	if recent {
		return // a new connection on the same ports: the counts are not its
	}
	for _, n := range counts {
		c.Real.Packets.Add(n.Packets)
		c.Real.Bytes.Add(n.Bytes)
	}
	if table.Remove(c) {
		e.Stats.ConntrackGone.Add(1)
	}
}

// checkIdle asks conntrack, through alive, about the helped established
// connections that showed the daemon nothing for idleCheck (Conn.idle):
// one whose entry is gone leaves the table, as its lost destroy event
// would have removed it; one whose entry is there stays another
// helpedEstablished. Where conntrack cannot answer, the connection stays,
// at most helpedEstablished after its last packet or answer. It runs off
// the per-packet path (RunExpiry); alive is called without locks held.
func (e *Engine) checkIdle(at int64, alive func(*Conn) (bool, error)) (gone int) {
	for _, c := range e.Table.idle(at, nil) {
		there, err := alive(c)
		c.mu.Lock()
		// A packet since it was picked: the connection goes on (a reused
		// port's new connection would have replaced it).
		quiet := c.seen+int64(idleCheck) < at
		c.help.asked = at
		if err == nil && there {
			c.help.alive = at
		}
		c.mu.Unlock()
		if err == nil && !there && quiet && e.Table.Remove(c) {
			e.Stats.ConntrackGone.Add(1)
			gone++
		}
	}
	return gone
}

// conntrackAlive asks the kernel whether conntrack holds c's entry, by its
// original tuple (client -> VIP, or the add-on's match). It dials its
// socket at the first question and keeps it; close ends it.
type conntrackAlive struct {
	conn *conntrack.Conn
}

func (a *conntrackAlive) alive(c *Conn) (bool, error) {
	if a.conn == nil {
		conn, err := conntrack.Dial(nil)
		if err != nil {
			return false, fmt.Errorf("conntrack: %w", err)
		}
		a.conn = conn
	}
	f := conntrack.NewFlow(unix.IPPROTO_TCP, 0, c.Client.Addr(), c.VIP.Addr(), c.Client.Port(), c.VIP.Port(), 0, 0)
	_, err := a.conn.Get(f)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ENOENT):
		return false, nil
	}
	return false, err
}

func (a *conntrackAlive) close() {
	if a.conn != nil {
		a.conn.Close()
	}
}
