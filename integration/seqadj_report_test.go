//go:build integration

package integration

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"

	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/integration/topo"
)

// TestKernelSeqAdjReported (kernel datapath only): when a rewrite
// lengthens a reply (quirkyftpd's bare 227, rewritten to the VIP with its
// parentheses), the kernel records the change at the verdict but raises no
// conntrack event for it; the daemon then has the kernel report the
// connection, so that an update event carries the new seqadj records: what
// conntrackd carries to a backup router. Two lengthened replies on one
// control connection: two update events, the offset growing.
func TestKernelSeqAdjReported(t *testing.T) {
	needDaemon(t)
	needKind(t, "quirkyftpd")
	if !kernelDatapath() {
		t.Skip("compat datapath: its offsets live in the daemon and offsets4/6, not in conntrack's seqadj records")
	}
	tp := harness.tp
	var listen *conntrack.Conn
	if err := topo.Do(tp.Router, func() error {
		var err error
		listen, err = conntrack.Dial(nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer listen.Close()
	events := make(chan conntrack.Event, 1024)
	if _, err := listen.Listen(events, 1, []netfilter.NetlinkGroup{netfilter.GroupCTUpdate}); err != nil {
		t.Fatal(err)
	}
	before, setBefore := suiteStat(t, "seqadj_reported"), suiteStat(t, "seqadj_set")
	r := runFtpget(t, tp.Client, net.JoinHostPort(topo.VIP4, fmt.Sprint(topo.QuirkyPort)), "pasv", "small.bin,small.bin", 2, "-user", "bare227")
	for _, res := range r.results {
		if res.SHA256 != tp.Files[res.File] {
			t.Errorf("%s sha256 %s, want %s", res.File, res.SHA256, tp.Files[res.File])
		}
	}
	// The reports of the control connection (client to VIP:QuirkyPort),
	// its server's direction grown.
	var grown []uint32
	deadline := time.After(topo.Scaled(5 * time.Second))
	for len(grown) < 2 {
		select {
		case ev := <-events:
			f := ev.Flow
			if f.TupleOrig.Proto.DestinationPort != topo.QuirkyPort || f.TupleOrig.IP.DestinationAddress.String() != topo.VIP4 {
				continue
			}
			if a := f.SeqAdjReply; a.OffsetAfter != a.OffsetBefore && (len(grown) == 0 || grown[len(grown)-1] != a.OffsetAfter) {
				grown = append(grown, a.OffsetAfter)
			}
		case <-deadline:
			t.Fatalf("update events of the control connection carried offsets %v, want two growing ones (seqadj_reported %d -> %d)",
				grown, before, suiteStat(t, "seqadj_reported"))
		}
	}
	if grown[1] <= grown[0] {
		t.Errorf("offsets %v: the second report did not carry the second lengthening", grown)
	}
	// The connection's first change sets the records outright through
	// ctnetlink (seqadj_set), which reports itself; the second goes with
	// the verdict and is reported after it.
	reported, set := suiteStat(t, "seqadj_reported")-before, suiteStat(t, "seqadj_set")-setBefore
	if reported < 1 || reported+set < 2 {
		t.Errorf("seqadj_reported grew by %d and seqadj_set by %d, want 1 or more and 2 or more together", reported, set)
	}
	t.Logf("update events carried the server's direction's offset %v (seqadj_reported +%d, seqadj_set +%d)", grown, reported, set)
}

// suiteStat reads one of the suite daemon's counters.
func suiteStat(t *testing.T, name string) uint64 {
	t.Helper()
	var st ctl.Status
	ctlJSON(t, harness.tp.ControlSocket(), "status", &st)
	return st.Stats[name]
}
