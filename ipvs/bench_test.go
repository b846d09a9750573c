package ipvs_test

import (
	"net/netip"
	"testing"

	_ "github.com/nfhelper/nfhelper/helpers/ftp"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/nfq/nfqtest"
	"github.com/nfhelper/nfhelper/nfq/packet"
)

var (
	ap     = netip.MustParseAddrPort
	client = ap("203.0.113.2:40000")
	vip    = ap("198.51.100.10:21")
	rs1    = ap("10.0.0.11:21")
)

const (
	isn    = 5000
	ack    = packet.FlagACK
	pshAck = packet.FlagPSH | packet.FlagACK
)

func seg(src, dst netip.AddrPort, seq, ackn uint32, flags uint8, payload string, opts ...byte) []byte {
	return nfqtest.Build(nfqtest.Segment{Src: src, Dst: dst, Seq: seq, Ack: ackn, Flags: flags, Payload: []byte(payload), Options: opts})
}

// ftpEngine returns an engine with one FTP service on the VIP, over rs1.
func ftpEngine(tb testing.TB, dp ipvs.Datapath) *ipvs.Engine {
	tb.Helper()
	h, _ := ipvs.LookupHelper("ftp")
	svc, err := ipvs.NewService("ftp", vip, "rr", h, []*ipvs.RealServer{{Addr: rs1, Weight: 1, Mark: 1 << 16}})
	if err != nil {
		tb.Fatal(err)
	}
	e, err := ipvs.NewEngine([]*ipvs.Service{svc}, ipvs.Options{MarkMask: 0x00ff0000, Datapath: dp})
	if err != nil {
		tb.Fatal(err)
	}
	return e
}

// ftpConn returns a worker with one FTP control connection through the VIP,
// handshake done.
func ftpConn(tb testing.TB) *ipvs.Worker {
	tb.Helper()
	w := ftpEngine(tb, ipvs.DatapathCompat).NewWorker()
	w.Process(seg(client, vip, 100, 0, packet.FlagSYN, ""), 0)
	w.Process(seg(rs1, client, isn, 101, packet.FlagSYN|ack, ""), 0)
	return w
}

func payload(tb testing.TB, v ipvs.Verdict, orig []byte) (uint32, string) {
	tb.Helper()
	p := verdictPacket(tb, v, orig)
	return p.TCP().Seq(), string(p.PayloadBytes())
}

// verdictPacket parses the verdict's packet (orig where unaltered), which
// must carry a valid TCP checksum.
func verdictPacket(tb testing.TB, v ipvs.Verdict, orig []byte) *packet.Packet {
	tb.Helper()
	b := orig
	if v.Packet != nil {
		b = v.Packet
	}
	p := new(packet.Packet)
	if err := packet.Parse(b, p); err != nil || !p.TCPChecksumValid() {
		tb.Fatalf("verdict packet: %v", err)
	}
	return p
}

// TestFTPSplit227 runs the FTP helper through the engine: a PASV reply split
// inside its numbers is reassembled, rewritten and opens its channel with
// the packet that completes it.
func TestFTPSplit227(t *testing.T) {
	w := ftpConn(t)
	w.Process(seg(client, rs1, 101, isn+1, pshAck, "PASV\r\n"), 0)
	first := seg(rs1, client, isn+1, 107, pshAck, "227 Entering Passive Mode (10,0,")
	v := w.Process(first, 0)
	if s, p := payload(t, v, first); s != isn+1 || p != "227 " || len(v.Open) != 0 {
		t.Fatalf("first half: seq %d %q open %v", s, p, v.Open)
	}
	second := seg(rs1, client, isn+33, 107, pshAck, "0,11,156,64).\r\n")
	v = w.Process(second, 0)
	s, p := payload(t, v, second)
	if s != isn+5 || p != "Entering Passive  (198,51,100,10,156,64).\r\n" {
		t.Fatalf("second half: seq %d %q", s, p)
	}
	if len(v.Open) != 1 || v.Open[0].VIP != ap("198.51.100.10:40000") || v.Open[0].Server != ap("10.0.0.11:40000") {
		t.Errorf("channel %+v", v.Open)
	}
	// The reply kept its length: later segments are not shifted.
	next := seg(rs1, client, isn+48, 107, pshAck, "150 ok\r\n")
	if s, _ := payload(t, w.Process(next, 0), next); s != isn+48 {
		t.Errorf("later segment moved to %d", s)
	}
}

func benchmark(b *testing.B, w *ipvs.Worker, pkt []byte) {
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		w.Process(pkt, 0)
	}
}

// BenchmarkProcess measures the per-packet verdict path (parse, look up,
// helper, rewrite, checksums) without queue I/O. Segments are resent
// copies, so the helper path is the stream's replay of a recorded rewrite.
func BenchmarkProcess(b *testing.B) {
	w := ftpConn(b)
	w.Process(seg(client, rs1, 101, isn+1, pshAck, "PASV\r\n"), 0)
	reply := seg(rs1, client, isn+1, 107, pshAck, "227 Entering Passive Mode (10,0,0,11,156,64).\r\n")
	w.Process(reply, 0)
	// plain: a client ACK on a control connection nothing was rewritten on
	// (no offset to apply).
	plain := ftpConn(b)
	plain.Process(seg(client, rs1, 101, isn+1, pshAck, "NOOP\r\n"), 0)
	plain.Process(seg(rs1, client, isn+1, 107, pshAck, "200 NOOP ok.\r\n"), 0)
	b.Run("plain", func(b *testing.B) { benchmark(b, plain, seg(client, rs1, 107, isn+16, ack, "")) })
	// ack: the client's ACK after the rewritten 227, its ack number corrected.
	b.Run("ack", func(b *testing.B) { benchmark(b, w, seg(client, rs1, 107, isn+1, ack, "")) })
	b.Run("rewritten227", func(b *testing.B) { benchmark(b, w, reply) })
	b.Run("ackSACK", func(b *testing.B) {
		benchmark(b, w, seg(client, rs1, 107, isn+1, ack, "", nfqtest.SACK(isn+100, isn+200)...))
	})
	b.Run("unknown", func(b *testing.B) { benchmark(b, w, seg(ap("192.0.2.1:1"), ap("192.0.2.2:2"), 1, 1, ack, "")) })
}

// BenchmarkStream feeds a control connection new data in order: each
// iteration a PASV, its 227 (rewritten, channel opened) and the client's ACK.
func BenchmarkStream(b *testing.B) {
	w := ftpConn(b)
	const cmd, reply = "PASV\r\n", "227 Entering Passive Mode (10,0,0,11,156,64).\r\n"
	cseq, sseq := uint32(101), uint32(isn+1)
	pasv, pkt227, pktAck := seg(client, rs1, 0, 0, pshAck, cmd), seg(rs1, client, 0, 0, pshAck, reply), seg(client, rs1, 0, 0, ack, "")
	var p packet.Packet
	at := func(pkt []byte, seq, ackn uint32) []byte {
		packet.Parse(pkt, &p)
		p.TCP().SetSeq(seq)
		p.TCP().SetAck(ackn)
		return pkt
	}
	b.ReportAllocs()
	for b.Loop() {
		w.Process(at(pasv, cseq, sseq), 0)
		cseq += uint32(len(cmd))
		w.Process(at(pkt227, sseq, cseq), 0)
		sseq += uint32(len(reply))
		w.Process(at(pktAck, cseq, sseq), 0)
	}
}
