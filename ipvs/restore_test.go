package ipvs

import "testing"

func TestRestoreResumesWithOffsets(t *testing.T) {
	svc, err := NewService("line", vip, "rr", lineHelper{"0123456789"}, []*RealServer{{Addr: rs1, Weight: 1, Mark: 1 << 16}})
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewEngine([]*Service{svc}, Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	if e.Restore(client, vip, ap("10.0.0.99:21"), true, [2]int32{}, false) {
		t.Error("restored a connection to a server the service does not have")
	}
	if !e.Restore(client, vip, rs1, true, [2]int32{0, 7}, false) {
		t.Fatal("not restored")
	}
	if got := svc.Servers[0].Active.Load(); got != 1 {
		t.Errorf("active connections of the server: %d", got)
	}
	c := &tconn{t: t, e: e, w: e.NewWorker()}
	const s = 5000 // anywhere: the stream picks up here
	if gotSeq, got := c.send(s, "1 x\n"); gotSeq != s+7 || got != "1 x\n" {
		t.Fatalf("first segment after restore: %d %q", gotSeq, got)
	}
	if a := c.ack(s + 7 + 4); a != s+4 {
		t.Errorf("ack mapped to %d, want %d", a, s+4)
	}
	pkt := seg(rs1, client, s+4, 101, pshAck, "R abc\n")
	v := c.w.Process(pkt, 0)
	if gotSeq, got := c.out(v, pkt); gotSeq != s+4+7 || got != "R 0123456789\n" {
		t.Fatalf("rewrite after restore: %d %q", gotSeq, got)
	}
	want := Offsets{Store: true, Replace: true, Client: client, VIP: vip, Off: [2]int32{0, 14}}
	if v.Offsets != want {
		t.Errorf("offsets to store: %+v, want %+v", v.Offsets, want)
	}
	if v := c.w.Process(seg(rs1, client, s+10, 101, pshAck, "2 y\n"), 0); v.Offsets.Store {
		t.Error("unchanged offsets stored again")
	}
}

func TestOffsetsStoredOnFirstLengthChange(t *testing.T) {
	c := openConn(t, "0123456789", 100)
	s := uint32(101)
	if v := c.server(s, pshAck, "1 x\n"); v.Offsets.Store {
		t.Error("offsets stored without a length change")
	}
	v := c.server(s+4, pshAck, "R abc\n")
	want := Offsets{Store: true, Client: client, VIP: vip, Off: [2]int32{0, 7}}
	if v.Offsets != want {
		t.Errorf("offsets: %+v, want %+v", v.Offsets, want)
	}
}

func TestReusedClientPortGetsNewConnection(t *testing.T) {
	c := openConn(t, "xy", 100)
	old := c.e.Table.LookupVIP(client, vip)
	c.w.Process(seg(client, vip, 100, 0, syn, ""), 0)
	if c.e.Table.LookupVIP(client, vip) != old {
		t.Fatal("a retransmitted SYN of an opening connection replaced it")
	}
	c.w.Process(seg(client, rs1, 101, 101, ack, ""), 0)
	c.w.Process(seg(client, rs1, 101, 101, finAck, ""), 0)
	// A SYN after the close: a new connection on the reused client port.
	c.w.Process(seg(client, vip, 9000, 0, syn, ""), 0)
	if now := c.e.Table.LookupVIP(client, vip); now == old || now == nil {
		t.Fatal("the new connection on a reused client port took over the old one's state")
	}
}
