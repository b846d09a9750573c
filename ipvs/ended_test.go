package ipvs

import (
	"net/netip"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/nfq/packet"
)

// lengthened opens a helped connection from cl whose server line "R x" is
// rewritten longer: it gets stream offsets and asks for its pure ACKs.
func lengthened(t *testing.T, e *Engine, w *Worker, cl uint16) *Conn {
	t.Helper()
	from := netip.AddrPortFrom(client.Addr(), cl)
	w.Process(seg(from, vip, 100, 0, syn, ""), 0)
	w.Process(seg(rs1, from, 1000, 101, syn|ack, ""), 0)
	w.Process(seg(from, rs1, 101, 1001, ack, ""), 0)
	v := w.Process(seg(rs1, from, 1001, 101, pshAck, "R x\n"), 0)
	if !v.Offsets.Store || v.Acks.Kind != ChannelAcks {
		t.Fatalf("lengthened line: offsets %+v acks %+v", v.Offsets, v.Acks)
	}
	return e.Table.LookupVIP(from, vip)
}

// A connection that leaves the table reports the elements it left in the
// kernel, however it leaves; one that never had any reports nothing.
func TestEndedReportsElements(t *testing.T) {
	var got []Ended
	c := openConnWith(t, "longer text", 1000, Options{OnEnded: func(x Ended) { got = append(got, x) }})
	c.clientAck(1001)
	c.e.Table.Expire(now() + int64(time.Hour)) // established: stays
	if len(got) != 0 {
		t.Fatalf("reported %+v", got)
	}
	conn := c.e.Table.LookupVIP(client, vip)
	c.server(1001, pshAck, "R x\n")
	c.e.Table.Remove(conn)
	if len(got) != 1 || !got[0].Offsets || !got[0].Acks || got[0].AcksNAT ||
		got[0].Client != client || got[0].VIP != vip || got[0].Server != rs1 {
		t.Fatalf("ended %+v", got)
	}
	// A packet of the ended connection that a worker was handling as it
	// left asks for nothing more: nobody would delete it.
	conn.mu.Lock()
	conn.help.acksQueued, conn.help.offsetsStored = false, false
	conn.mu.Unlock()
	if err := packet.Parse(seg(rs1, client, 1005, 101, pshAck, "R y\n"), &c.w.in); err != nil {
		t.Fatal(err)
	}
	if v := c.w.help(conn, FromServer); v.Offsets.Store || v.Acks.Kind != 0 {
		t.Errorf("after its end: offsets %+v acks %+v", v.Offsets, v.Acks)
	}

	// Never rewritten: nothing to delete.
	got = got[:0]
	d := openConnWith(t, "x", 1000, Options{OnEnded: func(x Ended) { got = append(got, x) }})
	d.e.Table.Expire(now() + int64(time.Hour))
	if d.e.Table.Len() != 0 || len(got) != 0 {
		t.Fatalf("plain end: %d left, reported %+v", d.e.Table.Len(), got)
	}
}

// A client port reused at once by a new connection with elements under
// the same keys: the old connection's deletion must leave them.
func TestUnownedKeepsNewerConnectionsElements(t *testing.T) {
	var got []Ended
	c := openConnWith(t, "longer text", 1000, Options{OnEnded: func(x Ended) { got = append(got, x) }})
	old := lengthened(t, c.e, c.w, 50000)
	old.mu.Lock()
	old.state = StateClose // closed: the next SYN on its port is a new connection
	old.mu.Unlock()
	// The new connection replaces the old one in the table.
	now := lengthened(t, c.e, c.w, 50000)
	if now == old || len(got) != 1 {
		t.Fatalf("replaced: %v, reported %+v", now != old, got)
	}
	if x := c.e.Unowned(got[0]); x.Offsets || x.Acks {
		t.Errorf("newer connection's elements to be deleted: %+v", x)
	}
	// Before the newer connection asked for its own: delete.
	got = got[:0]
	now.mu.Lock()
	now.state = StateClose
	now.mu.Unlock()
	c.w.Process(seg(ap("203.0.113.2:50000"), vip, 100, 0, syn, ""), 0)
	if len(got) != 1 {
		t.Fatalf("reported %+v", got)
	}
	if x := c.e.Unowned(got[0]); !x.Offsets || !x.Acks {
		t.Errorf("ended connection's elements kept: %+v", x)
	}
	// The ended connection's own keys, still in the table (an alias not
	// yet swept), are no owner.
	if x := c.e.Unowned(Ended{Client: client, VIP: vip, Server: rs1, Offsets: true, conn: c.e.Table.LookupVIP(client, vip)}); !x.Offsets {
		t.Errorf("its own entry kept its element: %+v", x)
	}
}
