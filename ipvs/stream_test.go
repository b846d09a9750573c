package ipvs

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/nfhelper/nfhelper/nfq/nfqtest"
	"github.com/nfhelper/nfhelper/nfq/packet"
)

// lineHelper is a stand-in helper: a server line "R <word>" is rewritten to
// "R " + repl, and an incomplete server line starting with "R" is withheld.
type lineHelper struct{ repl string }

func (h lineHelper) Name() string                      { return "line" }
func (h lineHelper) Bind(*Session, *Policy) ConnHelper { return h }

func (h lineHelper) Inspect(dir Direction, data []byte, fixed int, fin bool, r *Result) {
	if dir != FromServer {
		return
	}
	for off := 0; off < len(data); {
		n := bytes.IndexByte(data[off:], '\n')
		if n < 0 {
			if data[off] == 'R' && !fin && off >= fixed {
				r.Carry, r.Hold = len(data)-off, len(data)-off
			}
			return
		}
		if off >= fixed && bytes.HasPrefix(data[off:], []byte("R ")) {
			r.Replace(off+2, n-2, []byte(h.repl))
		}
		off += n + 1
	}
}

var (
	ap     = netip.MustParseAddrPort
	client = ap("203.0.113.2:40000")
	vip    = ap("198.51.100.10:21")
	rs1    = ap("10.0.0.11:21")
)

const (
	syn    = packet.FlagSYN
	ack    = packet.FlagACK
	pshAck = packet.FlagPSH | packet.FlagACK
	finAck = packet.FlagFIN | packet.FlagACK
)

type tconn struct {
	t    testing.TB
	e    *Engine
	w    *Worker
	sISN uint32         // server's initial sequence number
	srv  netip.AddrPort // the server as its packets show it to the worker
}

// openConn sets up a helped connection with the server's stream starting at
// sISN+1 and the client's at 101.
func openConn(t testing.TB, repl string, sISN uint32) *tconn {
	t.Helper()
	return openConnMode(t, repl, sISN, false)
}

// openConnMode is openConn, in the kernel datapath's mode where kernel is
// set: the worker sees packets after NAT (the server's from the VIP).
func openConnMode(t testing.TB, repl string, sISN uint32, kernel bool) *tconn {
	t.Helper()
	opts := Options{}
	if kernel {
		opts.Datapath = DatapathKernel
	}
	return openConnWith(t, repl, sISN, opts)
}

// openConnWith is openConn on an engine built with opts (its mark mask
// aside).
func openConnWith(t testing.TB, repl string, sISN uint32, opts Options) *tconn {
	t.Helper()
	svc, err := NewService("line", vip, "rr", lineHelper{repl}, []*RealServer{{Addr: rs1, Weight: 1, Mark: 1 << 16}})
	if err != nil {
		t.Fatal(err)
	}
	opts.MarkMask = 0x00ff0000
	e, err := NewEngine([]*Service{svc}, opts)
	if err != nil {
		t.Fatal(err)
	}
	kernel := opts.Datapath == DatapathKernel
	c := &tconn{t: t, e: e, w: e.NewWorker(), sISN: sISN, srv: rs1}
	if v := c.w.Process(seg(client, vip, 100, 0, syn, ""), 0); !v.SetMark {
		t.Fatal("SYN not scheduled")
	}
	if kernel {
		c.srv = vip
		c.w.Process(seg(client, rs1, 100, 0, syn, ""), 0) // the helper's queue: after DNAT
	}
	if v := c.server(sISN, syn|ack, ""); v.Packet != nil || v.Drop {
		t.Fatal("SYN-ACK altered")
	}
	return c
}

func seg(src, dst netip.AddrPort, seq, ackn uint32, flags uint8, payload string, opts ...byte) []byte {
	return nfqtest.Build(nfqtest.Segment{Src: src, Dst: dst, Seq: seq, Ack: ackn, Flags: flags, Payload: []byte(payload), Options: opts})
}

func (c *tconn) server(seq uint32, flags uint8, payload string) Verdict {
	return c.w.Process(seg(c.srv, client, seq, 101, flags, payload), 0)
}

func (c *tconn) clientAck(ackn uint32, opts ...byte) Verdict {
	return c.w.Process(seg(client, rs1, 101, ackn, ack, "", opts...), 0)
}

// out is what the receiver gets: seq, payload and flags.
func (c *tconn) out(v Verdict, orig []byte) (uint32, string) {
	c.t.Helper()
	if v.Drop {
		c.t.Fatal("dropped")
	}
	b := orig
	if v.Packet != nil {
		b = v.Packet
	}
	var p packet.Packet
	if err := packet.Parse(b, &p); err != nil {
		c.t.Fatal(err)
	}
	if !p.TCPChecksumValid() {
		c.t.Fatal("bad TCP checksum")
	}
	return p.TCP().Seq(), string(p.PayloadBytes())
}

func (c *tconn) send(seq uint32, payload string) (uint32, string) {
	c.t.Helper()
	pkt := seg(rs1, client, seq, 101, pshAck, payload)
	return c.out(c.w.Process(pkt, 0), pkt)
}

func (c *tconn) acked(v Verdict, orig []byte) uint32 {
	c.t.Helper()
	b := orig
	if v.Packet != nil {
		b = v.Packet
	}
	var p packet.Packet
	packet.Parse(b, &p)
	return p.TCP().Ack()
}

func (c *tconn) ack(ackn uint32, opts ...byte) uint32 {
	c.t.Helper()
	pkt := seg(client, rs1, 101, ackn, ack, "", opts...)
	return c.acked(c.w.Process(pkt, 0), pkt)
}

func TestStreamRewriteAndMap(t *testing.T) {
	const isn = 5000
	c := openConn(t, "longer-text", isn)
	s := uint32(isn + 1)
	line := "R short\r\n" // "short\r" -> "longer-text": +5 bytes (the \r is part of the word)
	gotSeq, got := c.send(s, "220 hi\r\n")
	if gotSeq != s || got != "220 hi\r\n" {
		t.Fatalf("untouched line: %d %q", gotSeq, got)
	}
	s += 8
	gotSeq, got = c.send(s, line)
	if gotSeq != s || got != "R longer-text\n" {
		t.Fatalf("rewrite: %d %q", gotSeq, got)
	}
	grow := uint32(len("R longer-text\n") - len(line))
	next := s + uint32(len(line))
	if gotSeq, _ := c.send(next, "200 ok\r\n"); gotSeq != next+grow {
		t.Errorf("next segment at %d, want %d", gotSeq, next+grow)
	}
	// The rewritten segment retransmitted: identical output.
	if gotSeq, got := c.send(s, line); gotSeq != s || got != "R longer-text\n" {
		t.Errorf("retransmission: %d %q", gotSeq, got)
	}
	// An earlier segment retransmitted keeps its old offset.
	if gotSeq, got := c.send(isn+1, "220 hi\r\n"); gotSeq != isn+1 || got != "220 hi\r\n" {
		t.Errorf("earlier retransmission: %d %q", gotSeq, got)
	}
	// ACKs: before the rewrite, covering it, and with SACK beyond it.
	if a := c.ack(s); a != s {
		t.Errorf("ack before the rewritten line mapped to %d", a)
	}
	if a := c.ack(next + grow); a != next {
		t.Errorf("ack covering the rewritten line mapped to %d, want %d", a, next)
	}
	pkt := seg(client, rs1, 101, s, ack, "", nfqtest.SACK(next+grow, next+grow+8)...)
	v := c.w.Process(pkt, 0)
	var p packet.Packet
	packet.Parse(v.Packet, &p)
	if !bytes.Equal(p.TCP().Options(), nfqtest.SACK(next, next+8)) || !p.TCPChecksumValid() {
		t.Errorf("SACK not mapped: % x", p.TCP().Options())
	}
}

func TestStreamSplitLineWithheld(t *testing.T) {
	const isn = 7000
	c := openConn(t, "0123456789", isn)
	s := uint32(isn + 1)
	// "R ab" is withheld; the rest of segment 1 goes now.
	gotSeq, got := c.send(s, "1 x\nR ab")
	if gotSeq != s || got != "1 x\n" {
		t.Fatalf("segment 1: %d %q", gotSeq, got)
	}
	// The client acknowledges all it got: the sender is told the withheld
	// bytes arrived too, so that Nagle lets it send the rest.
	if a := c.ack(s + 4); a != s+8 {
		t.Errorf("ack of delivered bytes mapped to %d, want %d", a, s+8)
	}
	// Segment 1 retransmitted: the same, still withholding.
	if gotSeq, got := c.send(s, "1 x\nR ab"); gotSeq != s || got != "1 x\n" {
		t.Errorf("retransmitted segment 1: %d %q", gotSeq, got)
	}
	// Segment 2 completes the line: the withheld bytes go with it, rewritten.
	gotSeq, got = c.send(s+8, "c\n")
	if gotSeq != s+4 || got != "R 0123456789\n" {
		t.Fatalf("segment 2: %d %q", gotSeq, got)
	}
	// "abc" -> "0123456789": +7.
	if gotSeq, _ := c.send(s+10, "2 y\n"); gotSeq != s+10+7 {
		t.Errorf("after the split line: seq %d, want %d", gotSeq, s+17)
	}
	// Segment 2 resent alone (its output was lost): the sender believes
	// "R ab" delivered, so they are resent with it, rewritten the same way.
	if gotSeq, got := c.send(s+8, "c\n"); gotSeq != s+4 || got != "R 0123456789\n" {
		t.Errorf("segment 2 resent: %d %q", gotSeq, got)
	}
	// Once the receiver acknowledges the line, those bytes are let go.
	if a := c.ack(s + 4 + 13); a != s+10 {
		t.Errorf("ack of the line mapped to %d, want %d", a, s+10)
	}
}

func TestStreamFullyWithheldRepeatsLastByte(t *testing.T) {
	const isn = 9000
	c := openConn(t, "xy", isn)
	s := uint32(isn + 1)
	c.send(s, "1 x\n")
	pkt := seg(rs1, client, s+4, 101, pshAck, "R a")
	v := c.w.Process(pkt, 0)
	gotSeq, got := c.out(v, pkt)
	if gotSeq != s+3 || got != "\n" {
		t.Fatalf("fully withheld segment became %d %q, want the last delivered byte again", gotSeq, got)
	}
	gotSeq, got = c.send(s+7, "b\n")
	if gotSeq != s+4 || got != "R xy\n" {
		t.Fatalf("completion: %d %q", gotSeq, got)
	}
}

func TestStreamFINFlushesWithheld(t *testing.T) {
	const isn = 100
	c := openConn(t, "xy", isn)
	s := uint32(isn + 1)
	c.send(s, "R a")
	pkt := seg(rs1, client, s+3, 101, finAck, "")
	gotSeq, got := c.out(c.w.Process(pkt, 0), pkt)
	if gotSeq != s || got != "R a" {
		t.Fatalf("FIN: %d %q, want the withheld bytes delivered with it", gotSeq, got)
	}
}

func TestStreamOutOfOrderDropped(t *testing.T) {
	const isn = 100
	c := openConn(t, "xy", isn)
	s := uint32(isn + 1)
	if v := c.server(s+10, pshAck, "R b\n"); !v.Drop {
		t.Fatal("a segment after a gap was passed before its line start was known")
	}
	if gotSeq, got := c.send(s, "0123456789"); gotSeq != s || got != "0123456789" {
		t.Fatalf("gap filled: %d %q", gotSeq, got)
	}
	if _, got := c.send(s+10, "R b\n"); got != "R xy\n" {
		t.Errorf("resent segment: %q", got)
	}
	if c.e.Stats.Dropped.Load() != 1 {
		t.Errorf("dropped = %d", c.e.Stats.Dropped.Load())
	}
	// A jump far ahead is a lost stream, passed on unread.
	if v := c.server(s+maxGap*2, pshAck, "R c\n"); v.Drop {
		t.Error("far jump dropped")
	}
}

func TestStreamWraparound(t *testing.T) {
	isn := uint32(0xfffffff0)
	c := openConn(t, "0123456789", isn)
	s := isn + 1
	c.send(s, "0123456789ab\n") // 13 bytes, ends past zero
	line := uint32(13)
	if gotSeq, got := c.send(s+line, "R abc\n"); gotSeq != s+line || got != "R 0123456789\n" {
		t.Fatalf("rewrite across zero: %d %q", gotSeq, got)
	}
	if gotSeq, _ := c.send(s+line+6, "x\n"); gotSeq != s+line+6+7 {
		t.Errorf("after: %#x", gotSeq)
	}
	if a := c.ack(s + line + 6 + 7); a != s+line+6 {
		t.Errorf("ack %#x, want %#x", a, s+line+6)
	}
}

func TestStreamSteadyStateDoesNotAllocate(t *testing.T) {
	const isn = 100
	c := openConn(t, "0123456789", isn)
	s := uint32(isn + 1)
	c.send(s, "R abc\n")
	rewritten := seg(rs1, client, s, 101, pshAck, "R abc\n")
	later := seg(rs1, client, s+6, 101, pshAck, "250 ok\r\n")
	c.w.Process(later, 0)
	clientAck := seg(client, rs1, 101, s+6+7, ack, "", nfqtest.SACK(s+100, s+200)...)
	for name, pkt := range map[string][]byte{"rewritten retransmission": rewritten, "shifted": later, "mapped ack": clientAck} {
		if n := testing.AllocsPerRun(200, func() { c.w.Process(pkt, 0) }); n != 0 {
			t.Errorf("%s: %.1f allocations per packet", name, n)
		}
	}
}

// TestStreamPureACKAfterFIN: the last ACK of a closing connection has a
// sequence number one past the data (the FIN counts); it is no gap.
func TestStreamPureACKAfterFIN(t *testing.T) {
	const isn = 100
	c := openConn(t, "xy", isn)
	s := uint32(isn + 1)
	c.send(s, "221 bye\r\n")
	c.server(s+9, finAck, "")
	if v := c.server(s+10, ack, ""); v.Drop {
		t.Fatal("the ACK after FIN was dropped")
	}
	if c.e.Stats.Dropped.Load() != 0 {
		t.Errorf("dropped %d", c.e.Stats.Dropped.Load())
	}
}

// TestStreamThrottlesUnacknowledgedRewrites: a sender that has maxEdits/2
// rewrites unacknowledged gets its new segments dropped until the receiver
// acknowledges them; retransmissions still get every rewrite.
func TestStreamThrottlesUnacknowledgedRewrites(t *testing.T) {
	const isn = 100
	c := openConn(t, "0123456789", isn)
	s := uint32(isn + 1)
	line := "R abc\n"
	for i := range maxEdits / 2 {
		if _, got := c.send(s+uint32(i*len(line)), line); got != "R 0123456789\n" {
			t.Fatalf("line %d: %q", i, got)
		}
	}
	next := s + uint32(maxEdits/2*len(line))
	if v := c.server(next, pshAck, line); !v.Drop {
		t.Fatal("a new segment past the unacknowledged rewrites was not held back")
	}
	if c.e.Stats.Throttled.Load() != 1 {
		t.Errorf("throttled = %d", c.e.Stats.Throttled.Load())
	}
	if _, got := c.send(s, line); got != "R 0123456789\n" {
		t.Errorf("retransmission of the first line: %q", got)
	}
	c.ack(next + uint32(maxEdits/2*7))
	if _, got := c.send(next, line); got != "R 0123456789\n" {
		t.Errorf("after the acknowledgement: %q", got)
	}
}

// TestStreamThrottledGapNotSkipped: after a throttled segment, the
// segment past it comes twice (a tail loss probe resends the last segment
// as it was) before the throttled one is resent. The throttled bytes were
// dropped here, not passed by a failed-open queue: the stream must not skip
// them, or their resending goes out unrewritten.
func TestStreamThrottledGapNotSkipped(t *testing.T) {
	const isn = 100
	c := openConn(t, "0123456789", isn)
	s := uint32(isn + 1)
	line := "R abc\n"
	for i := range maxEdits / 2 {
		c.send(s+uint32(i*len(line)), line)
	}
	next := s + uint32(maxEdits/2*len(line))
	if v := c.server(next, pshAck, line); !v.Drop {
		t.Fatal("not throttled")
	}
	c.ack(next + uint32(maxEdits/2*7))
	after := next + uint32(len(line))
	for i := range 2 {
		if v := c.server(after, pshAck, line); !v.Drop {
			t.Fatalf("the segment past the throttled one, sent %d times, passed before the gap was filled", i+1)
		}
	}
	if _, got := c.send(next, line); got != "R 0123456789\n" {
		t.Errorf("the throttled segment resent: %q", got)
	}
	if _, got := c.send(after, line); got != "R 0123456789\n" {
		t.Errorf("the segment past it resent: %q", got)
	}
	if n := c.e.Stats.Skipped.Load(); n != 0 {
		t.Errorf("skipped = %d", n)
	}
}

// TestHelpedSYNsLowerMSS: both ends of a helped connection learn an MSS
// lower by MSSRoom, so that segments grown by withheld bytes and edits
// still fit the path.
func TestHelpedSYNsLowerMSS(t *testing.T) {
	mss1460 := []byte{2, 4, 0x05, 0xb4}
	mssOf := func(v Verdict) int {
		t.Helper()
		if v.Packet == nil {
			return 1460
		}
		var p packet.Packet
		if err := packet.Parse(v.Packet, &p); err != nil || !p.TCPChecksumValid() {
			t.Fatalf("altered SYN: %v, checksum valid %v", err, p.TCPChecksumValid())
		}
		o := p.TCP().Options()
		return int(o[2])<<8 | int(o[3])
	}
	svc, err := NewService("line", vip, "rr", lineHelper{"x"}, []*RealServer{{Addr: rs1, Weight: 1, Mark: 1 << 16}})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := NewService("plain", ap("198.51.100.10:80"), "rr", nil, []*RealServer{{Addr: ap("10.0.0.11:80"), Weight: 1, Mark: 2 << 16}})
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewEngine([]*Service{svc, plain}, Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	w := e.NewWorker()
	if got := mssOf(w.Process(seg(client, vip, 100, 0, syn, "", mss1460...), 0)); got != 1460-MSSRoom {
		t.Errorf("client's SYN: MSS %d, want %d", got, 1460-MSSRoom)
	}
	if got := mssOf(w.Process(seg(rs1, client, 500, 101, syn|ack, "", mss1460...), 0)); got != 1460-MSSRoom {
		t.Errorf("server's SYN-ACK: MSS %d, want %d", got, 1460-MSSRoom)
	}
	if v := w.Process(seg(client, ap("198.51.100.10:80"), 100, 0, syn, "", mss1460...), 0); v.Packet != nil {
		t.Error("a SYN to a service without a helper was altered")
	}
}

// TestStreamPicksUpAfterBytesWentBy: bytes that passed around the daemon
// (the queue failed open) are acknowledged by the receiver; the stream
// picks up after them instead of dropping every later segment as past a gap.
func TestStreamPicksUpAfterBytesWentBy(t *testing.T) {
	const isn = 100
	c := openConn(t, "0123456789", isn)
	s := uint32(isn + 1)
	c.send(s, "1 x\n")
	// "2 y\n" went by unseen; the client acknowledges it.
	if a := c.ack(s + 8); a != s+8 {
		t.Errorf("ack %d, want %d", a, s+8)
	}
	if c.e.Stats.Skipped.Load() != 1 {
		t.Errorf("skipped = %d", c.e.Stats.Skipped.Load())
	}
	if gotSeq, got := c.send(s+8, "R abc\n"); gotSeq != s+8 || got != "R 0123456789\n" {
		t.Errorf("after the bytes that went by: %d %q", gotSeq, got)
	}
	if c.e.Stats.Dropped.Load() != 0 {
		t.Errorf("dropped %d", c.e.Stats.Dropped.Load())
	}
}

// TestStreamPicksUpWhenResentPastAGap: bytes went by unseen and no ACK of
// them reached the daemon (pure ACKs of a clean connection pass it by); the
// next segment, dropped past the gap, comes again as it was: its sender was
// told the bytes before it arrived. It passes, rewritten, and the stream
// goes on from it.
func TestStreamPicksUpWhenResentPastAGap(t *testing.T) {
	const isn = 100
	c := openConn(t, "0123456789", isn)
	s := uint32(isn + 1)
	c.send(s, "1 x\n")
	// "2 y\n" went by unseen.
	if v := c.server(s+8, pshAck, "R abc\n"); !v.Drop {
		t.Fatal("a segment past a gap passed at once")
	}
	if gotSeq, got := c.send(s+8, "R abc\n"); gotSeq != s+8 || got != "R 0123456789\n" {
		t.Errorf("resent: %d %q", gotSeq, got)
	}
	if _, got := c.send(s+14, "R d\n"); got != "R 0123456789\n" {
		t.Errorf("after it: %q", got)
	}
	if n := c.e.Stats.Skipped.Load(); n != 1 {
		t.Errorf("skipped = %d", n)
	}
}

func TestStreamFINIsNoSkip(t *testing.T) {
	const isn = 100
	c := openConn(t, "xy", isn)
	s := uint32(isn + 1)
	c.send(s, "221 bye\r\n")
	c.server(s+9, finAck, "")
	c.ack(s + 10) // the FIN's sequence number acknowledged
	if n := c.e.Stats.Skipped.Load(); n != 0 {
		t.Errorf("skipped = %d after the FIN's acknowledgement", n)
	}
}
