package ipvs

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/nfhelper/nfhelper/nfq/nfqtest"
	"github.com/nfhelper/nfhelper/nfq/packet"
	"github.com/nfhelper/nfhelper/nfq/seqnum"
)

// tcpSim runs a sender and a receiver through the worker over a lossy,
// reordering, duplicating network and checks that the receiver's byte
// stream is the sender's with every "R" line rewritten: no byte lost,
// doubled or shifted, whatever the sender retransmits and however it cuts
// its retransmissions.
type tcpSim struct {
	t    *testing.T
	c    *tconn
	rng  *rand.Rand
	log  []string
	data []byte // what the server's application wrote

	// Sender (the server): input sequence space.
	isn           uint32
	sndUna, sndNx uint32 // offsets into data

	// Receiver (the client): output sequence space.
	rcvNxt uint32 // offset from isn+1 of the next byte expected
	ooo    map[uint32][]byte
	got    []byte

	toClient []simSeg // middlebox -> receiver, in flight
	toServer []uint32 // receiver's ACKs (output space) not yet through the middlebox

	// The kernel datapath: the kernel's seqadj after the worker's verdict.
	kernel bool
	kadj   nfqtest.SeqAdj // by Direction
}

// throughKernel is what the kernel does with a verdict's packet b in
// direction dir whose payload was inLen bytes long: set the records the
// verdict asks for, record a length change carried with NFQA_CT, map.
func (s *tcpSim) throughKernel(v Verdict, dir Direction, b []byte, inLen int) (seq, ack uint32, payload []byte) {
	var p packet.Packet
	if err := packet.Parse(b, &p); err != nil {
		s.fail("parse: %v", err)
	}
	seq, ack, payload = p.TCP().Seq(), p.TCP().Ack(), p.PayloadBytes()
	if !s.kernel {
		return seq, ack, payload
	}
	if v.SeqAdj != nil {
		for d, a := range v.SeqAdj {
			s.kadj.Set(d, a)
		}
	}
	if diff := int32(len(payload) - inLen); diff != 0 && v.SeqAdjDiff {
		s.kadj.Record(int(dir), seqnum.Value(seq), seqnum.Delta(diff))
	}
	kseq, kack := s.kadj.Map(int(dir), seqnum.Value(seq), seqnum.Value(ack))
	return uint32(kseq), uint32(kack), payload
}

type simSeg struct {
	seq  uint32 // absolute
	data []byte
}

func (s *tcpSim) logf(format string, a ...any) { s.log = append(s.log, fmt.Sprintf(format, a...)) }

func (s *tcpSim) fail(format string, a ...any) {
	s.t.Helper()
	tail := s.log
	if len(tail) > 60 && !strings.Contains(s.t.Name(), "Dbg") {
		tail = tail[len(tail)-60:]
	}
	s.t.Fatalf("%s\n%s", fmt.Sprintf(format, a...), strings.Join(tail, "\n"))
}

// transmit sends data[from:from+n] through the middlebox.
func (s *tcpSim) transmit(from, n uint32) {
	seq := s.isn + 1 + from
	payload := string(s.data[from : from+n])
	pkt := seg(s.c.srv, client, seq, 101, pshAck, payload)
	v := s.c.w.Process(pkt, 0)
	if v.Drop {
		s.logf("S %d+%d %q: dropped", from, n, payload)
		return
	}
	b := pkt
	if v.Packet != nil {
		b = v.Packet
	}
	outSeq, _, data := s.throughKernel(v, FromServer, b, int(n))
	out := simSeg{outSeq, append([]byte(nil), data...)}
	s.logf("S %d+%d %q -> %d %q", from, n, payload, out.seq-s.isn-1, out.data)
	s.toClient = append(s.toClient, out)
}

// receive is the client's TCP taking one segment.
func (s *tcpSim) receive(g simSeg) {
	off := g.seq - s.isn - 1
	s.logf("R %d %q (rcvNxt %d)", off, g.data, s.rcvNxt)
	if int32(off-s.rcvNxt) > 0 {
		s.ooo[off] = g.data
	} else if end := off + uint32(len(g.data)); int32(end-s.rcvNxt) > 0 {
		s.got = append(s.got, g.data[s.rcvNxt-off:]...)
		s.rcvNxt = end
	}
	for {
		progressed := false
		for o, d := range s.ooo {
			if int32(o-s.rcvNxt) > 0 {
				continue
			}
			if end := o + uint32(len(d)); int32(end-s.rcvNxt) > 0 {
				s.got = append(s.got, d[s.rcvNxt-o:]...)
				s.rcvNxt = end
				progressed = true
			}
			delete(s.ooo, o)
		}
		if !progressed {
			break
		}
	}
	s.toServer = append(s.toServer, s.isn+1+s.rcvNxt)
}

// ackBack takes the receiver's ACK through the middlebox to the sender.
func (s *tcpSim) ackBack(a uint32) {
	pkt := seg(client, rs1, 101, a, ack, "")
	v := s.c.w.Process(pkt, 0)
	if v.Drop {
		s.logf("A %d: dropped", a-s.isn-1)
		return
	}
	b := pkt
	if v.Packet != nil {
		b = v.Packet
	}
	_, outAck, _ := s.throughKernel(v, FromClient, b, 0)
	in := outAck - s.isn - 1
	s.logf("A %d -> %d (una %d nxt %d)", a-s.isn-1, in, s.sndUna, s.sndNx)
	if int32(in-s.sndNx) > 0 {
		s.fail("ACK %d of bytes the sender never sent (next %d)", in, s.sndNx)
	}
	if int32(in-s.sndUna) > 0 {
		s.sndUna = in
	}
}

func simData(rng *rand.Rand, lines int) []byte {
	var b bytes.Buffer
	for range lines {
		if rng.IntN(3) == 0 {
			fmt.Fprintf(&b, "R %s\n", strings.Repeat("a", 1+rng.IntN(6)))
		} else {
			fmt.Fprintf(&b, "%d %s\n", rng.IntN(10), strings.Repeat("x", rng.IntN(20)))
		}
	}
	return b.Bytes()
}

func simWant(data []byte, repl string) []byte {
	var out bytes.Buffer
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if bytes.HasPrefix(line, []byte("R ")) {
			out.WriteString("R " + repl + "\n")
			continue
		}
		out.Write(line)
	}
	return out.Bytes()
}

func runTCPSim(t *testing.T, seed uint64, loss, dup int, kernel bool) {
	runTCPSimWith(t, seed, loss, dup, 40, 0, kernel)
}

// runTCPSimWith: lines of data; a window of 0 is 4 segments; kernel: the
// kernel datapath's mode, with the kernel's seqadj after the worker.
func runTCPSimWith(t *testing.T, seed uint64, loss, dup, lines int, window uint32, kernel bool) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	const repl = "0123456789"
	isn := rng.Uint32()
	s := &tcpSim{t: t, c: openConnMode(t, repl, isn, kernel), rng: rng, data: simData(rng, lines), isn: isn, ooo: map[uint32][]byte{}, kernel: kernel}
	want := simWant(s.data, repl)
	// Tiny segments make lines split often and withhold whole segments.
	mss := []uint32{3, 8, 24, 200}[seed%4]
	if window == 0 {
		window = 4 * mss
	}
	for step := 0; step < 200000; step++ {
		if len(s.got) == len(want) && s.sndUna == uint32(len(s.data)) {
			break
		}
		switch r := rng.IntN(10); {
		case r < 3 && s.sndNx < uint32(len(s.data)) && s.sndNx-s.sndUna < window:
			n := min(1+rng.Uint32N(mss), uint32(len(s.data))-s.sndNx)
			s.transmit(s.sndNx, n)
			s.sndNx += n
		case r == 3 && s.sndUna < s.sndNx && len(s.toClient) == 0 || r == 4 && rng.IntN(8) == 0 && s.sndUna < s.sndNx:
			// A timeout: resend from the first unacknowledged byte, cut
			// anew (Linux coalesces retransmissions).
			n := min(1+rng.Uint32N(mss), s.sndNx-s.sndUna)
			s.transmit(s.sndUna, n)
		case r < 8 && len(s.toClient) > 0:
			i := 0
			if rng.IntN(3) == 0 {
				i = rng.IntN(len(s.toClient))
			}
			g := s.toClient[i]
			if rng.IntN(100) >= dup {
				s.toClient = append(s.toClient[:i], s.toClient[i+1:]...)
			}
			if rng.IntN(100) < loss {
				s.logf("R lost %d", g.seq-s.isn-1)
				continue
			}
			s.receive(g)
			if !bytes.HasPrefix(want, s.got) {
				s.fail("seed %d: the receiver got %q\nwant a prefix of %q", seed, s.got, want)
			}
		case len(s.toServer) > 0:
			a := s.toServer[0]
			s.toServer = s.toServer[1:]
			if rng.IntN(100) < loss {
				continue
			}
			s.ackBack(a)
		}
	}
	if !bytes.Equal(s.got, want) {
		s.fail("seed %d: stalled; the receiver got %q\nwant %q", seed, s.got, want)
	}
}

func TestStreamTCPSimulation(t *testing.T) {
	seeds := 300
	if testing.Short() {
		seeds = 50
	}
	for _, tc := range []struct {
		name      string
		loss, dup int
	}{{"clean", 0, 0}, {"lossy", 10, 0}, {"lossy-dup", 10, 10}, {"very-lossy", 30, 5}} {
		for _, kernel := range []bool{false, true} {
			name := tc.name
			if kernel {
				name += "/kernel-seqadj"
			}
			t.Run(name, func(t *testing.T) {
				for seed := range uint64(seeds) {
					runTCPSim(t, seed, tc.loss, tc.dup, kernel)
				}
			})
		}
	}
}

// TestStreamTCPSimulationPipelined: a sender with far more rewritten lines
// in flight than the stream keeps edits for is held back, never corrupted.
func TestStreamTCPSimulationPipelined(t *testing.T) {
	for seed := range uint64(40) {
		runTCPSimWith(t, seed, int(seed%3)*5, 0, 600, 20000, seed%2 == 1)
	}
}
