package ipvs

import (
	"testing"

	"github.com/nfhelper/nfhelper/nfq/seqnum"
)

// adoptHelper is lineHelper that records whether it was adopted.
type adoptHelper struct {
	lineHelper
	adopted *int
}

func (h adoptHelper) Bind(*Session, *Policy) ConnHelper { return &adoptConn{h.lineHelper, h.adopted} }

type adoptConn struct {
	lineHelper
	adopted *int
}

func (c *adoptConn) Adopted() { *c.adopted++ }

func adoptEngine(t *testing.T, datapath Datapath) (*Engine, *Service, *int) {
	t.Helper()
	adopted := new(int)
	svc, err := NewService("line", vip, "rr", adoptHelper{lineHelper{"0123456789"}, adopted}, []*RealServer{{Addr: rs1, Weight: 1, Mark: 1 << 16}})
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewEngine([]*Service{svc}, Options{MarkMask: 0x00ff0000, Datapath: datapath})
	if err != nil {
		t.Fatal(err)
	}
	return e, svc, adopted
}

// TestAdoptMidstream: a connection another router balanced is taken up in
// the middle of its streams, with the offsets its entry carried: its next
// segments are shifted and read, its helper told it was adopted.
func TestAdoptMidstream(t *testing.T) {
	e, svc, adopted := adoptEngine(t, DatapathCompat)
	if e.Adopt(client, vip, ap("10.0.0.99:21"), [2]int32{}) != nil {
		t.Error("adopted a connection to a server the service does not have")
	}
	if !e.Helped(vip, rs1) || e.Helped(vip, ap("10.0.0.99:21")) || e.Helped(ap("198.51.100.11:21"), rs1) {
		t.Error("Helped answers wrong")
	}
	if e.Adopt(client, vip, rs1, [2]int32{0, 7}) != svc {
		t.Fatal("not adopted")
	}
	if e.Adopt(client, vip, rs1, [2]int32{0, 7}) != nil {
		t.Error("adopted a connection the engine holds")
	}
	if *adopted != 1 || e.Stats.AdoptedMidstream.Load() != 1 || e.Stats.Restored.Load() != 0 {
		t.Errorf("helper adopted %d times, counters adopted_midstream %d restored %d", *adopted, e.Stats.AdoptedMidstream.Load(), e.Stats.Restored.Load())
	}
	if got := svc.Servers[0].Active.Load(); got != 1 {
		t.Errorf("active connections of the server: %d", got)
	}
	c := &tconn{t: t, e: e, w: e.NewWorker()}
	const s = 90000 // anywhere: the stream picks up here
	if gotSeq, got := c.send(s, "R abc\n"); gotSeq != s+7 || got != "R 0123456789\n" {
		t.Fatalf("first segment after adoption: %d %q", gotSeq, got)
	}
	if a := c.ack(s + 7 + 13); a != s+6 {
		t.Errorf("ack mapped to %d, want %d", a, s+6)
	}
	// Its end deletes the offsets element the datapath wrote at adoption.
	var ended []Ended
	e.onEnded = func(x Ended) { ended = append(ended, x) }
	e.Table.Remove(e.Table.LookupVIP(client, vip))
	if len(ended) != 1 || !ended[0].Offsets {
		t.Errorf("ended: %+v, want the offsets element deleted", ended)
	}
}

// TestAdoptKernelMidstream: on the kernel datapath the offsets are the
// seqadj records the entry carries.
func TestAdoptKernelMidstream(t *testing.T) {
	e, _, adopted := adoptEngine(t, DatapathKernel)
	adj := [2]seqnum.Adj{FromServer: {Pos: 500, Before: 0, After: 3}}
	if !e.AdoptKernelMidstream(client, vip, rs1, adj) || *adopted != 1 || e.Stats.AdoptedMidstream.Load() != 1 {
		t.Fatalf("not adopted (helper told %d times)", *adopted)
	}
	c := e.Table.LookupVIP(client, vip)
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := &c.help.streams[FromServer]; st.sync != resuming || st.base != 3 || st.kadj != adj[FromServer] {
		t.Errorf("server stream: sync %v base %d kadj %+v", st.sync, st.base, st.kadj)
	}
}

// TestScheduledNotAdopted: a connection followed from its SYN is not
// adopted: its helper keeps today's behaviour.
func TestScheduledNotAdopted(t *testing.T) {
	e, _, adopted := adoptEngine(t, DatapathCompat)
	w := e.NewWorker()
	w.Process(seg(client, vip, 100, 0, syn, ""), 0)
	if e.Table.LookupVIP(client, vip) == nil {
		t.Fatal("not scheduled")
	}
	if *adopted != 0 || e.Stats.AdoptedMidstream.Load() != 0 {
		t.Errorf("a scheduled connection was adopted")
	}
	if e.Adopt(client, vip, rs1, [2]int32{}) != nil {
		t.Error("a scheduled connection adopted again")
	}
}
