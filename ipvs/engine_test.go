package ipvs_test

import (
	"bytes"
	"net/netip"
	"testing"

	_ "github.com/nfhelper/nfhelper/helpers/ftp"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/nfq"
	"github.com/nfhelper/nfhelper/nfq/nfqtest"
)

const mask = 0x00ff0000

var (
	ap     = netip.MustParseAddrPort
	client = ap("203.0.113.2:40000")
	vip    = ap("198.51.100.10:21")
	rs1    = ap("10.0.0.11:21")
	rs2    = ap("10.0.0.12:21")
)

const (
	syn    = nfq.FlagSYN
	ack    = nfq.FlagACK
	pshAck = nfq.FlagPSH | nfq.FlagACK
)

func newEngine(t testing.TB, vip netip.AddrPort, reals ...netip.AddrPort) *ipvs.Engine {
	h, ok := ipvs.LookupHelper("ftp")
	if !ok {
		t.Fatal("ftp helper not registered")
	}
	var rs []*ipvs.RealServer
	for i, a := range reals {
		rs = append(rs, &ipvs.RealServer{Addr: a, Weight: 1, Mark: uint32(i+1) << 16})
	}
	svc, err := ipvs.NewService("ftp", vip, "rr", h, rs)
	if err != nil {
		t.Fatal(err)
	}
	return ipvs.NewEngine([]*ipvs.Service{svc}, mask)
}

func seg(src, dst netip.AddrPort, seq, ackn uint32, flags uint8, payload string, opts ...byte) []byte {
	return nfqtest.Build(nfqtest.Segment{Src: src, Dst: dst, Seq: seq, Ack: ackn, Flags: flags, Payload: []byte(payload), Options: opts})
}

func parse(t testing.TB, b []byte) *nfq.Packet {
	t.Helper()
	var p nfq.Packet
	if err := nfq.Parse(b, &p); err != nil {
		t.Fatal(err)
	}
	if !p.TCPChecksumValid() {
		t.Fatal("verdict packet has a bad TCP checksum")
	}
	return &p
}

// connect schedules a connection from client and returns the chosen server.
func connect(t testing.TB, w *ipvs.Worker, client, vip netip.AddrPort) ipvs.Verdict {
	t.Helper()
	v := w.Process(seg(client, vip, 100, 0, syn, ""), 0x1)
	if !v.SetMark {
		t.Fatal("SYN to the VIP not scheduled")
	}
	return v
}

func TestScheduleSYN(t *testing.T) {
	e := newEngine(t, vip, rs1, rs2)
	w := e.NewWorker()
	v := connect(t, w, client, vip)
	if v.Mark != 0x10001 {
		t.Errorf("mark %#x, want the first server's bits and the packet's own bit kept (0x10001)", v.Mark)
	}
	again := w.Process(seg(client, vip, 100, 0, syn, ""), 0)
	if again.Mark != 0x10000 || e.Stats.Scheduled.Load() != 1 {
		t.Errorf("retransmitted SYN: mark %#x, scheduled %d", again.Mark, e.Stats.Scheduled.Load())
	}
	other := w.Process(seg(ap("203.0.113.2:40001"), vip, 100, 0, syn, ""), 0)
	if other.Mark != 0x20000 {
		t.Errorf("second connection mark %#x, want rr's next server 0x20000", other.Mark)
	}
	// Not a pure SYN, or no service: untouched.
	for name, pkt := range map[string][]byte{
		"ACK to the VIP":    seg(client, vip, 101, 1, ack, ""),
		"SYN to other port": seg(client, ap("198.51.100.10:22"), 100, 0, syn, ""),
		"garbage":           {0x45, 0, 0},
	} {
		if v := w.Process(pkt, 0); v.SetMark || v.Packet != nil || len(v.Channels) != 0 {
			t.Errorf("%s: verdict %+v", name, v)
		}
	}
	if e.Stats.Unparsed.Load() != 1 {
		t.Errorf("unparsed = %d", e.Stats.Unparsed.Load())
	}
}

const (
	reply227 = "227 Entering Passive Mode (10,0,0,11,156,64).\r\n"
	want227  = "227 Entering Passive Mode (198,51,100,10,156,64).\r\n"
	growth   = 4    // len("198,51,100,10") - len("10,0,0,11")
	srvISN   = 5000 // server's sequence number of the 227 reply
)

// passive runs a connection up to a rewritten 227 reply.
func passive(t testing.TB) (*ipvs.Engine, *ipvs.Worker) {
	e := newEngine(t, vip, rs1)
	w := e.NewWorker()
	connect(t, w, client, vip)
	if v := w.Process(seg(rs1, client, srvISN-1, 101, syn|ack, ""), 0); v.Packet != nil {
		t.Fatal("SYN-ACK altered")
	}
	return e, w
}

func TestRewrite227AndCorrect(t *testing.T) {
	e, w := passive(t)
	v := w.Process(seg(rs1, client, srvISN, 101, pshAck, reply227), 0)
	if v.Packet == nil {
		t.Fatal("227 not rewritten")
	}
	p := parse(t, v.Packet)
	if got := string(p.PayloadBytes()); got != want227 {
		t.Fatalf("payload %q", got)
	}
	if p.TCP().Seq() != srvISN {
		t.Errorf("rewritten segment's own seq moved to %d", p.TCP().Seq())
	}
	wantCh := ipvs.Channel{Kind: ipvs.ChannelPassive, Client: ap("203.0.113.2:0"), Server: ap("10.0.0.11:40000"), VIP: ap("198.51.100.10:40000")}
	if len(v.Channels) != 1 || v.Channels[0] != wantCh {
		t.Errorf("channels %+v, want %+v", v.Channels, wantCh)
	}
	c, _ := e.Table.Lookup(client, rs1)
	if s := c.Seq(ipvs.FromServer); s.After != growth || s.Pos != srvISN {
		t.Fatalf("seq correction %+v", s)
	}

	// The server's next segment moves by the growth.
	next := srvISN + uint32(len(reply227))
	v = w.Process(seg(rs1, client, next, 101, pshAck, "150 Here comes the data\r\n"), 0)
	if got := parse(t, v.Packet).TCP().Seq(); got != next+growth {
		t.Errorf("next server seq %d, want %d", got, next+growth)
	}

	// The client's ACK covering the rewritten reply, with a SACK block.
	sack := nfqtest.SACK(next+growth+100, next+growth+200)
	v = w.Process(seg(client, rs1, 101, next+growth, ack, "", sack...), 0)
	q := parse(t, v.Packet)
	if got := q.TCP().Ack(); got != next {
		t.Errorf("client ack %d, want %d", got, next)
	}
	if o := q.TCP().Options(); !bytes.Equal(o, nfqtest.SACK(next+100, next+200)) {
		t.Errorf("SACK not corrected: % x", o)
	}

	// An ACK from before the rewrite is left alone.
	v = w.Process(seg(client, rs1, 101, srvISN, ack, ""), 0)
	if v.Packet != nil {
		t.Errorf("ack before the correction point altered")
	}

	// A retransmitted 227 gets the same rewrite and does not count twice.
	v = w.Process(seg(rs1, client, srvISN, 101, pshAck, reply227), 0)
	p = parse(t, v.Packet)
	if string(p.PayloadBytes()) != want227 || p.TCP().Seq() != srvISN {
		t.Errorf("retransmission: seq %d payload %q", p.TCP().Seq(), p.PayloadBytes())
	}
	if s := c.Seq(ipvs.FromServer); s.After != growth {
		t.Errorf("retransmission counted again: %+v", s)
	}
}

func TestBadChecksumNotHelped(t *testing.T) {
	e, w := passive(t)
	pkt := seg(rs1, client, srvISN, 101, pshAck, reply227)
	pkt[len(pkt)-5] ^= 0xff // corrupt the payload, not the checksum
	if v := w.Process(pkt, 0); v.Packet != nil || len(v.Channels) != 0 {
		t.Errorf("corrupt 227 acted on: %+v", v)
	}
	if e.Stats.BadChecksum.Load() != 1 {
		t.Errorf("bad checksum not counted")
	}
}

func TestActiveBounceRefused(t *testing.T) {
	_, w := passive(t)
	if v := w.Process(seg(client, rs1, 101, srvISN, pshAck, "PORT 203,0,113,2,200,10\r\n"), 0); len(v.Channels) != 1 {
		t.Errorf("PORT from the client itself: channels %+v", v.Channels)
	}
	if v := w.Process(seg(client, rs1, 101, srvISN, pshAck, "PORT 192,0,2,99,200,10\r\n"), 0); len(v.Channels) != 0 {
		t.Errorf("PORT to a third party opened %+v", v.Channels)
	}
}

func TestEPSV6(t *testing.T) {
	vip6, rs6, cl6 := ap("[2001:db8:1::10]:21"), ap("[fd00::11]:21"), ap("[2001:db8:2::2]:40000")
	e := newEngine(t, vip6, rs6)
	w := e.NewWorker()
	connect(t, w, cl6, vip6)
	v := w.Process(seg(rs6, cl6, srvISN, 101, pshAck, "229 Entering Extended Passive Mode (|||40001|)\r\n"), 0)
	if v.Packet != nil {
		t.Error("229 altered though the port needs no change")
	}
	want := ipvs.Channel{Kind: ipvs.ChannelPassive, Client: ap("[2001:db8:2::2]:0"), Server: ap("[fd00::11]:40001"), VIP: ap("[2001:db8:1::10]:40001")}
	if len(v.Channels) != 1 || v.Channels[0] != want {
		t.Errorf("channels %+v", v.Channels)
	}
}

func TestSteadyStateDoesNotAllocate(t *testing.T) {
	_, w := passive(t)
	reply := seg(rs1, client, srvISN, 101, pshAck, reply227)
	w.Process(reply, 0)
	next := srvISN + uint32(len(reply227))
	clientAck := seg(client, rs1, 101, next+growth, ack, "", nfqtest.SACK(next+growth+100, next+growth+200)...)
	plain := seg(client, rs1, 101, srvISN, ack, "")
	for name, pkt := range map[string][]byte{"227 rewrite": reply, "corrected ack": clientAck, "plain": plain} {
		if n := testing.AllocsPerRun(200, func() { w.Process(pkt, 0) }); n != 0 {
			t.Errorf("%s: %.1f allocations per packet", name, n)
		}
	}
}

func benchmark(b *testing.B, pkt []byte, w *ipvs.Worker) {
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		w.Process(pkt, 0)
	}
}

// BenchmarkProcess measures the per-packet verdict path (parse, look up,
// helper, rewrite, checksum) without queue I/O.
func BenchmarkProcess(b *testing.B) {
	_, w := passive(b)
	reply := seg(rs1, client, srvISN, 101, pshAck, reply227)
	w.Process(reply, 0)
	next := srvISN + uint32(len(reply227))
	b.Run("plain", func(b *testing.B) { benchmark(b, seg(client, rs1, 101, srvISN, ack, ""), w) })
	b.Run("command", func(b *testing.B) { benchmark(b, seg(client, rs1, 101, srvISN, pshAck, "RETR big.bin\r\n"), w) })
	b.Run("rewrite227", func(b *testing.B) { benchmark(b, reply, w) })
	b.Run("corrected", func(b *testing.B) {
		benchmark(b, seg(client, rs1, 101, next+growth, ack, "", nfqtest.SACK(next+growth+100, next+growth+200)...), w)
	})
	b.Run("unknown", func(b *testing.B) { benchmark(b, seg(ap("192.0.2.1:1"), ap("192.0.2.2:2"), 1, 1, ack, ""), w) })
}
