package ipvs_test

import (
	"testing"

	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/nfq/packet"
)

// TestAddOnBehindSNAT follows a control connection the user's own rules
// DNAT (198.51.100.20:21 -> 10.0.0.12:21) and SNAT (client -> 10.0.0.1).
func TestAddOnBehindSNAT(t *testing.T) {
	const addOnMark = 0x00040000
	match, server, nat := ap("198.51.100.20:21"), ap("10.0.0.12:21"), ap("10.0.0.1:40000")
	h, _ := ipvs.LookupHelper("ftp")
	e, err := ipvs.NewEngine([]*ipvs.Service{ipvs.NewAddOn("router-ftp", match, h, addOnMark)}, ipvs.Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	w := e.NewWorker()

	// The SYN after DNAT, marked by the forward rule: the server is learned
	// and watched, and our mark bits are cleared again.
	v := w.Process(seg(client, server, 100, 0, packet.FlagSYN, ""), 0x1|addOnMark)
	if !v.SetMark || v.Mark != 0x1 {
		t.Errorf("mark %#x, want our bits cleared (0x1)", v.Mark)
	}
	if len(v.Open) != 1 || v.Open[0].Kind != ipvs.ChannelWatch || v.Open[0].Server != server {
		t.Fatalf("open %+v, want a watch of the server", v.Open)
	}
	if v := w.Process(seg(ap("203.0.113.9:1234"), server, 7, 0, packet.FlagSYN, ""), addOnMark); len(v.Open) != 0 {
		t.Errorf("server watched twice: %+v", v.Open)
	}

	// The SYN-ACK goes to the client's translated address.
	if v := w.Process(seg(server, nat, isn, 101, packet.FlagSYN|ack, ""), 0); v.Drop || v.Packet != nil {
		t.Fatalf("SYN-ACK: %+v", v)
	}
	if e.Stats.SNATLearned.Load() != 1 || e.Stats.Adopted.Load() != 2 {
		t.Fatalf("snat learned %d, adopted %d", e.Stats.SNATLearned.Load(), e.Stats.Adopted.Load())
	}

	// PORT names the client; the server must be told the translated address.
	port := seg(client, server, 101, isn+1, pshAck, "PORT 203,0,113,2,195,80\r\n")
	v = w.Process(port, 0)
	if _, p := payload(t, v, port); p != "PORT 10,0,0,1,195,80\r\n" {
		t.Errorf("PORT sent as %q", p)
	}
	want := ipvs.Channel{Kind: ipvs.ChannelActive, Client: ap("203.0.113.2:50000"), Server: ap("10.0.0.12:0"), VIP: ap("198.51.100.20:0"), NAT: ap("10.0.0.1:50000")}
	if len(v.Open) != 1 || v.Open[0].NAT != want.NAT || v.Open[0].Client != want.Client || v.Open[0].VIP != want.VIP {
		t.Errorf("active channel %+v, want %+v", v.Open, want)
	}
	// The server's data connection to that port starts: the channel is
	// done, and its port on the translated address free again.
	if ch, ok := e.ChannelUsed(server.Addr(), want.NAT, want.Client); !ok || ch.Kind != ipvs.ChannelActive || ch.NAT != want.NAT {
		t.Errorf("active data connection started: %+v %v", ch, ok)
	}
	if e.Claimed(want) || e.Stats.Used.Load() != 1 {
		t.Errorf("port on the translated address still claimed, or not counted (%d)", e.Stats.Used.Load())
	}

	// The server's reply, from its side of the SNAT; it acknowledges the
	// client's bytes as it got them (the PORT line 3 bytes shorter).
	w.Process(seg(server, nat, isn+1, 123, pshAck, "200 ok\r\n"), 0)
	w.Process(seg(client, server, 126, isn+9, pshAck, "PASV\r\n"), 0)
	reply := seg(server, nat, isn+9, 129, pshAck, "227 Entering Passive Mode (10,0,0,12,156,64).\r\n")
	v = w.Process(reply, 0)
	if _, p := payload(t, v, reply); p != "227 Entering Passive  (198,51,100,20,156,64).\r\n" {
		t.Errorf("227 sent as %q", p)
	}
	if len(v.Open) != 1 || v.Open[0].Kind != ipvs.ChannelPassive || v.Open[0].NAT != nat || v.Open[0].VIP != ap("198.51.100.20:40000") {
		t.Errorf("passive channel %+v", v.Open)
	}
}

// TestAddOnSNATPortTakenOver: the user's rules SNAT every client to one
// fixed address and port, so a new control connection has the server-side
// tuple of the previous one, which the kernel's NAT evicts from TIME_WAIT
// (nf_nat_used_tuple_harder). The new SYN-ACK must name the new connection,
// not find the old one under that tuple.
func TestAddOnSNATPortTakenOver(t *testing.T) {
	const addOnMark = 0x00040000
	match, server, nat := ap("198.51.100.20:2121"), ap("10.0.0.12:21"), ap("10.0.0.1:16500")
	h, _ := ipvs.LookupHelper("ftp")
	e, err := ipvs.NewEngine([]*ipvs.Service{ipvs.NewAddOn("router-ftp", match, h, addOnMark)}, ipvs.Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	w := e.NewWorker()

	// The first session, closed by both sides.
	w.Process(seg(client, server, 100, 0, packet.FlagSYN, ""), addOnMark)
	w.Process(seg(server, nat, isn, 101, packet.FlagSYN|ack, ""), 0)
	w.Process(seg(client, server, 101, isn+1, ack, ""), 0)
	w.Process(seg(client, server, 101, isn+1, packet.FlagFIN|ack, ""), 0)
	w.Process(seg(server, nat, isn+1, 102, packet.FlagFIN|ack, ""), 0)
	w.Process(seg(client, server, 102, isn+2, ack, ""), 0)

	// The next one, from another client port, leaves by the same port.
	client2 := ap("203.0.113.2:40002")
	const isn2 = 90000
	w.Process(seg(client2, server, 7000, 0, packet.FlagSYN, ""), addOnMark)
	if v := w.Process(seg(server, nat, isn2, 7001, packet.FlagSYN|ack, ""), 0); v.Drop {
		t.Fatalf("second SYN-ACK dropped: %+v", v)
	}
	if n := e.Stats.SNATLearned.Load(); n != 2 {
		t.Fatalf("snat learned %d times, want 2 (the second SYN-ACK went to the first connection)", n)
	}
	w.Process(seg(client2, server, 7001, isn2+1, ack, ""), 0)
	port := seg(client2, server, 7001, isn2+1, pshAck, "PORT 203,0,113,2,195,80\r\n")
	v := w.Process(port, 0)
	if _, p := payload(t, v, port); p != "PORT 10,0,0,1,195,80\r\n" {
		t.Errorf("PORT of the second connection sent as %q, want the translated address", p)
	}
	// The server's reply reaches the second connection's stream: its 227
	// is rewritten.
	w.Process(seg(server, nat, isn2+1, 7023, pshAck, "200 ok\r\n"), 0)
	w.Process(seg(client2, server, 7026, isn2+9, pshAck, "PASV\r\n"), 0)
	reply := seg(server, nat, isn2+9, 7029, pshAck, "227 Entering Passive Mode (10,0,0,12,156,64).\r\n")
	v = w.Process(reply, 0)
	if _, p := payload(t, v, reply); p != "227 Entering Passive  (198,51,100,20,156,64).\r\n" {
		t.Errorf("227 of the second connection sent as %q", p)
	}
}
