package kernel

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/nfq/seqnum"
)

// ctWithUpdates enters a new network namespace and dials conntrack twice:
// a listener of update events first (a connection gets events only if one
// listened when it was made, nf_conntrack_events=2, as the daemon does),
// then a connection for requests. Both close when the test ends.
func ctWithUpdates(t *testing.T) (*conntrack.Conn, <-chan conntrack.Event) {
	t.Helper()
	inNewNetns(t)
	listen, err := conntrack.Dial(nil)
	if err != nil {
		t.Skipf("ctnetlink: %v", err)
	}
	t.Cleanup(func() { listen.Close() })
	events := make(chan conntrack.Event, 16)
	if _, err := listen.Listen(events, 1, []netfilter.NetlinkGroup{netfilter.GroupCTUpdate}); err != nil {
		t.Fatal(err)
	}
	c, err := conntrack.Dial(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, events
}

// TestReportConntrack: a connection's seqadj records reach conntrack's
// update events (what conntrackd carries to a backup router) through
// ReportConntrack, which changes nothing: the event after it carries the
// records the connection has.
func TestReportConntrack(t *testing.T) {
	c, events := ctWithUpdates(t)
	src, dst := netip.MustParseAddrPort("203.0.113.2:40000"), netip.MustParseAddrPort("198.51.100.10:21")
	f := conntrack.NewFlow(unix.IPPROTO_TCP, 0, src.Addr(), dst.Addr(), src.Port(), dst.Port(), 60, 0)
	// (Status 0: ti-mo/conntrack's status attribute makes the kernel
	// answer EBUSY.)
	if err := c.Create(f); err != nil {
		t.Fatalf("create a connection: %v", err)
	}
	ctnl, err := DialCtnetlink()
	if err != nil {
		t.Fatal(err)
	}
	defer ctnl.Close()
	orig := Tuple{Src: src, Dst: dst, Proto: unix.IPPROTO_TCP}
	// Records as a lengthened 227 leaves them: the server's direction
	// grew by 3 bytes from sequence number 1000.
	adj := [2]seqnum.Adj{DirReply: {Pos: 1000, Before: 0, After: 3}}
	if err := SetSeqAdj(ctnl, orig, adj); err != nil {
		t.Fatal(err)
	}
	// next waits for the connection's next update event and checks its
	// records.
	next := func(after string) {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case ev := <-events:
				if ev.Flow.TupleOrig.Proto.SourcePort != src.Port() {
					continue
				}
				if r := ev.Flow.SeqAdjReply; r.Position != 1000 || r.OffsetBefore != 0 || r.OffsetAfter != 3 {
					t.Errorf("update event after %s: reply seqadj %+v, want pos 1000, before 0, after 3", after, r)
				}
				return
			case <-timeout:
				t.Fatalf("no update event after %s", after)
			}
		}
	}
	next("SetSeqAdj")
	if err := ReportConntrack(ctnl, orig); err != nil {
		t.Fatal(err)
	}
	next("ReportConntrack")
}

// TestReportConntrackGone: a connection that is gone is an error.
func TestReportConntrackGone(t *testing.T) {
	inNewNetns(t)
	ctnl, err := DialCtnetlink()
	if err != nil {
		t.Skipf("ctnetlink: %v", err)
	}
	defer ctnl.Close()
	orig := Tuple{Src: netip.MustParseAddrPort("203.0.113.2:40001"), Dst: netip.MustParseAddrPort("198.51.100.10:21"), Proto: unix.IPPROTO_TCP}
	if err := ReportConntrack(ctnl, orig); err == nil {
		t.Error("a connection that does not exist was reported")
	}
}
