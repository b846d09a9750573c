package ipvs

import (
	"context"
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

// FollowConntrack removes connections from the table as soon as the kernel
// destroys their conntrack entry (closed and timed out, flushed, deleted
// by hand), instead of when their own timeout runs out. It returns when ctx
// ends, or with an error when the event socket fails.
func (e *Engine) FollowConntrack(ctx context.Context) error {
	c, err := conntrack.Dial(nil)
	if err != nil {
		return fmt.Errorf("conntrack events: %w", err)
	}
	defer c.Close()
	// A full socket buffer loses events (the table's timeouts catch those);
	// it must not end the listener.
	if err := c.SetOption(netlink.NoENOBUFS, true); err != nil {
		return fmt.Errorf("conntrack events: %w", err)
	}
	if err := c.SetReadBuffer(4 << 20); err != nil {
		return fmt.Errorf("conntrack events: %w", err)
	}
	events := make(chan conntrack.Event, 1024)
	errs, err := c.Listen(events, 1, []netfilter.NetlinkGroup{netfilter.GroupCTDestroy})
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
			if ev.Flow != nil {
				e.destroyed(ev.Flow.TupleOrig)
			}
		}
	}
}

// destroyed handles the end of the conntrack entry with original tuple t.
func (e *Engine) destroyed(t conntrack.Tuple) {
	if t.Proto.Protocol != unix.IPPROTO_TCP {
		return
	}
	client := netip.AddrPortFrom(t.IP.SourceAddress.Unmap(), t.Proto.SourcePort)
	dst := netip.AddrPortFrom(t.IP.DestinationAddress.Unmap(), t.Proto.DestinationPort)
	c := e.Table.LookupVIP(client, dst)
	if c == nil {
		return
	}
	c.mu.Lock()
	recent := now()-c.seen < int64(destroyGrace)
	c.mu.Unlock()
	if !recent && e.Table.Remove(c) {
		e.Stats.ConntrackGone.Add(1)
	}
}
