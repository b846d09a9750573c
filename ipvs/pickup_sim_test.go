package ipvs_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/nfq/nfqtest"
	"github.com/nfhelper/nfhelper/nfq/packet"
	"github.com/nfhelper/nfhelper/nfq/seqnum"
)

// ftpSim runs a whole FTP control session through the worker, picked up
// from the first packet the daemon sees of a kernel-scheduled connection,
// over a network that loses and reorders segments and whose senders resend
// from their first unacknowledged byte, cut anew. Each peer speaks when
// its previous words were acknowledged.
type ftpSim struct {
	t      *testing.T
	rng    *rand.Rand
	e      *ipvs.Engine
	w      *ipvs.Worker
	kernel bool           // the kernel datapath, its seqadj after the worker
	kadj   nfqtest.SeqAdj // by Direction
	acks   bool           // compat: the pure ACKs are queued (Verdict.Acks)
	isn    [2]uint32      // by Direction of the sender
	data   [2][]byte      // what each sender's application wrote
	una    [2]uint32      // offsets into data
	nxt    [2]uint32
	rcv    [2]uint32 // what the receiver of each stream has in order (its output offset)
	got    [2][]byte
	ooo    [2]map[uint32][]byte
	flight []simPkt // after the middlebox, to their receivers
	owe    [2]bool  // the receiver of each stream owes an ACK
	ports  map[uint16]bool
	log    []string
}

type simPkt struct {
	dir      ipvs.Direction // of the sender
	seq, ack uint32
	data     []byte
}

func (s *ftpSim) logf(format string, a ...any) { s.log = append(s.log, fmt.Sprintf(format, a...)) }

func (s *ftpSim) fail(format string, a ...any) {
	s.t.Helper()
	tail := s.log[max(0, len(s.log)-40):]
	s.t.Fatalf("%s\n%s", fmt.Sprintf(format, a...), strings.Join(tail, "\n"))
}

// ends are the packet's source and destination as the worker sees them.
func (s *ftpSim) ends(dir ipvs.Direction) (src, dst netip.AddrPort) {
	switch {
	case dir == ipvs.FromClient:
		return client, rs1
	case s.kernel:
		return vip, client // after NAT
	}
	return rs1, client // at raw priority, before conntrack
}

// ackOf is what the sender of dir acknowledges of the other stream.
func (s *ftpSim) ackOf(dir ipvs.Direction) uint32 { return s.isn[1-dir] + 1 + s.rcv[1-dir] }

// send puts data[from:from+n] of dir (n 0: a pure ACK) through the
// middlebox.
func (s *ftpSim) send(dir ipvs.Direction, from, n uint32) {
	src, dst := s.ends(dir)
	payload := s.data[dir][from : from+n]
	pkt := seg(src, dst, s.isn[dir]+1+from, s.ackOf(dir), pshAck, string(payload))
	if n == 0 {
		pkt = seg(src, dst, s.isn[dir]+1+from, s.ackOf(dir), ack, "")
		if !s.kernel && !s.acks {
			// Compat: the kernel passes pure ACKs by until asked.
			s.flight = append(s.flight, simPkt{dir, s.isn[dir] + 1 + from, s.ackOf(dir), nil})
			return
		}
	}
	v := s.w.Process(pkt, 0)
	if v.Acks.Kind != 0 {
		s.acks = true
	}
	for _, ch := range v.Open {
		s.ports[ch.Server.Port()] = true
	}
	if v.Announcing != nil {
		// The datapath's elements are in: the verdict goes.
		s.e.Announced(v.Announcing)
	}
	if v.Drop {
		s.logf("%v %d+%d %q: dropped", dir, from, n, payload)
		return
	}
	b := pkt
	if v.Packet != nil {
		b = v.Packet
	}
	out := s.throughKernel(v, dir, b, int(n))
	s.logf("%v %d+%d %q -> %d %q ack %d", dir, from, n, payload, out.seq-s.isn[dir]-1, out.data, out.ack)
	s.flight = append(s.flight, out)
}

// throughKernel is what the kernel datapath's seqadj does with the
// verdict's packet b; nothing on the compat datapath.
func (s *ftpSim) throughKernel(v ipvs.Verdict, dir ipvs.Direction, b []byte, inLen int) simPkt {
	var p packet.Packet
	if err := packet.Parse(b, &p); err != nil || !p.TCPChecksumValid() {
		s.fail("verdict packet: %v", err)
	}
	seq, ackn, data := p.TCP().Seq(), p.TCP().Ack(), bytes.Clone(p.PayloadBytes())
	if s.kernel {
		if v.SeqAdj != nil {
			for d, a := range v.SeqAdj {
				s.kadj.Set(d, a)
			}
		}
		if diff := len(data) - inLen; diff != 0 && v.SeqAdjDiff {
			s.kadj.Record(int(dir), seqnum.Value(seq), seqnum.Delta(diff))
		}
		kseq, kack := s.kadj.Map(int(dir), seqnum.Value(seq), seqnum.Value(ackn))
		seq, ackn = uint32(kseq), uint32(kack)
	}
	return simPkt{dir, seq, ackn, data}
}

// deliver hands a packet to its receiver: the ACK to it as the other
// stream's sender, the payload to it as this stream's receiver.
func (s *ftpSim) deliver(p simPkt) {
	peer := 1 - p.dir
	in := p.ack - s.isn[peer] - 1
	if int32(in-s.nxt[peer]) > 0 {
		s.fail("%v told of %d bytes arrived, sent %d", peer, in, s.nxt[peer])
	}
	if int32(in-s.una[peer]) > 0 {
		s.una[peer] = in
	}
	if len(p.data) == 0 {
		return
	}
	d := p.dir
	off := p.seq - s.isn[d] - 1
	if int32(off-s.rcv[d]) > 0 {
		s.ooo[d][off] = p.data
	} else if end := off + uint32(len(p.data)); int32(end-s.rcv[d]) > 0 {
		s.got[d] = append(s.got[d], p.data[s.rcv[d]-off:]...)
		s.rcv[d] = end
	}
	for progressed := true; progressed; {
		progressed = false
		for o, b := range s.ooo[d] {
			if int32(o-s.rcv[d]) > 0 {
				continue
			}
			if end := o + uint32(len(b)); int32(end-s.rcv[d]) > 0 {
				s.got[d] = append(s.got[d], b[s.rcv[d]-o:]...)
				s.rcv[d] = end
				progressed = true
			}
			delete(s.ooo[d], o)
		}
	}
	s.owe[d] = true
}

// ftpTurn is what one peer says when its previous words were taken.
type ftpTurn struct {
	dir  ipvs.Direction
	text string
}

func ftpSession(pasvs int) []ftpTurn {
	turns := []ftpTurn{
		{ipvs.FromServer, "220 Service ready.\r\n"},
		{ipvs.FromClient, "USER anonymous\r\n"},
		{ipvs.FromServer, "331 Please specify the password.\r\n"},
		{ipvs.FromClient, "PASS x\r\n"},
		{ipvs.FromServer, "230 Login successful.\r\n"},
	}
	for i := range pasvs {
		port := 30000 + i
		// Every other reply has no free text to absorb the longer VIP:
		// its rewrite shifts all later numbers.
		reply := fmt.Sprintf("227 Entering Passive Mode (10,0,0,11,%d,%d).\r\n", port>>8, port&0xff)
		if i%2 == 1 {
			reply = fmt.Sprintf("227 10,0,0,11,%d,%d\r\n", port>>8, port&0xff)
		}
		turns = append(turns,
			ftpTurn{ipvs.FromClient, "PASV\r\n"},
			ftpTurn{ipvs.FromServer, reply},
			ftpTurn{ipvs.FromClient, fmt.Sprintf("RETR file%d\r\n", i)},
			ftpTurn{ipvs.FromServer, "150 Opening BINARY mode data connection.\r\n226 Transfer complete.\r\n"})
	}
	return append(turns, ftpTurn{ipvs.FromClient, "QUIT\r\n"}, ftpTurn{ipvs.FromServer, "221 Goodbye.\r\n"})
}

// handshake picks the connection up: the compat datapath at the server's
// SYN-ACK (sent twice where resend), the kernel datapath from the SYN's
// conntrack entry.
func (s *ftpSim) handshake(resend bool) {
	if s.kernel {
		if !s.e.PickUpKernel(client, vip, rs1) {
			s.fail("not picked up")
		}
		syn := seg(client, rs1, s.isn[ipvs.FromClient], 0, packet.FlagSYN, "", mss1460...)
		if got := mssOf(s.t, s.w.Process(syn, 0), syn); got != 1460-ipvs.MSSRoom {
			s.fail("SYN's MSS %d", got)
		}
	}
	src, dst := s.ends(ipvs.FromServer)
	sa := seg(src, dst, s.isn[ipvs.FromServer], s.isn[ipvs.FromClient]+1, packet.FlagSYN|ack, "", mss1460...)
	for range 1 + btoi(resend) {
		if got := mssOf(s.t, s.w.Process(sa, 0), sa); got != 1460-ipvs.MSSRoom {
			s.fail("SYN-ACK's MSS %d", got)
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func runFTPSim(t *testing.T, seed uint64, loss int, kernel bool) {
	rng := rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d))
	s := &ftpSim{t: t, rng: rng, e: ftpEngineSched(t, "mh", kernel), kernel: kernel, ports: map[uint16]bool{},
		isn: [2]uint32{rng.Uint32(), rng.Uint32()}, ooo: [2]map[uint32][]byte{{}, {}}}
	s.w = s.e.NewWorker()
	s.handshake(rng.IntN(2) == 0)
	const pasvs = 6
	turns := ftpSession(pasvs)
	mss := []uint32{1, 5, 17, 1000}[seed%4]
	next := 0
	for step := 0; step < 100000; step++ {
		if next < len(turns) && s.una[1-turns[next].dir] == uint32(len(s.data[1-turns[next].dir])) {
			s.data[turns[next].dir] = append(s.data[turns[next].dir], turns[next].text...)
			next++
		}
		if next == len(turns) && s.una == [2]uint32{uint32(len(s.data[0])), uint32(len(s.data[1]))} {
			break
		}
		s.step(rng, mss, loss)
	}
	s.check(turns, pasvs)
}

// step is one event: a sender sends new bytes or resends, the network
// delivers (or loses) a packet, or a receiver acknowledges.
func (s *ftpSim) step(rng *rand.Rand, mss uint32, loss int) {
	d := ipvs.Direction(rng.IntN(2))
	switch r := rng.IntN(10); {
	case r < 3 && s.nxt[d] < uint32(len(s.data[d])) && s.nxt[d]-s.una[d] < 4*mss:
		n := min(1+rng.Uint32N(mss), uint32(len(s.data[d]))-s.nxt[d])
		s.send(d, s.nxt[d], n)
		s.nxt[d] += n
	case r == 3 && s.una[d] < s.nxt[d] && (len(s.flight) == 0 || rng.IntN(4) == 0):
		s.send(d, s.una[d], min(1+rng.Uint32N(mss), s.nxt[d]-s.una[d]))
	case r < 8 && len(s.flight) > 0:
		i := 0
		if rng.IntN(3) == 0 {
			i = rng.IntN(len(s.flight))
		}
		p := s.flight[i]
		s.flight = append(s.flight[:i], s.flight[i+1:]...)
		if rng.IntN(100) < loss {
			s.logf("lost %v %d", p.dir, p.seq-s.isn[p.dir]-1)
			return
		}
		s.deliver(p)
	case s.owe[1-d]:
		// The receiver of the other stream is d's sender.
		s.owe[1-d] = false
		s.send(d, s.nxt[d], 0)
	}
}

// check: the server got the client's words as they were, the client the
// server's with every 227 naming the VIP, one channel per PASV, one
// connection picked up.
func (s *ftpSim) check(turns []ftpTurn, pasvs int) {
	var want [2]string
	for _, tr := range turns {
		want[tr.dir] += tr.text
	}
	if got := string(s.got[ipvs.FromClient]); got != want[ipvs.FromClient] {
		s.fail("server got %q\nwant %q", got, want[ipvs.FromClient])
	}
	got := strings.SplitAfter(string(s.got[ipvs.FromServer]), "\n")
	sent := strings.SplitAfter(want[ipvs.FromServer], "\n")
	if len(got) != len(sent) {
		s.fail("client got %q\nserver sent %q", s.got[ipvs.FromServer], want[ipvs.FromServer])
	}
	for i, line := range sent {
		if !strings.HasPrefix(line, "227 ") {
			if got[i] != line {
				s.fail("client got line %q, server sent %q", got[i], line)
			}
			continue
		}
		addr := line[strings.Index(line, "10,0,0,11,"):]
		addr = "198,51,100,10," + addr[len("10,0,0,11,"):strings.IndexAny(addr, ").\r")]
		if !strings.HasPrefix(got[i], "227 ") || !strings.Contains(got[i], addr) || !strings.HasSuffix(got[i], "\r\n") {
			s.fail("227 went out as %q (server sent %q)", got[i], line)
		}
	}
	if len(s.ports) != pasvs || s.e.Stats.PickedUp.Load() != 1 || s.e.Table.Len() != 1 {
		s.fail("channels %v, picked up %d, table %d", s.ports, s.e.Stats.PickedUp.Load(), s.e.Table.Len())
	}
	if !s.kernel && !s.acks {
		s.fail("lengths changed, and the pure ACKs were never asked for")
	}
}

// ftpEngineSched is ftpEngine with scheduler sched.
func ftpEngineSched(tb testing.TB, sched string, kernel bool) *ipvs.Engine {
	opts := ipvs.Options{}
	if kernel {
		opts.Datapath = ipvs.DatapathKernel
	}
	return pickupEngine(tb, opts, svcSpec{sched, "ftp", vip, []netip.AddrPort{rs1}})
}

// TestPickUpFTPSimulation: whole FTP sessions of kernel-scheduled
// connections, picked up at the SYN-ACK (compat) or the SYN's conntrack
// entry (kernel), every PASV reply rewritten and every later number
// corrected, with and without loss.
func TestPickUpFTPSimulation(t *testing.T) {
	seeds := 200
	if testing.Short() {
		seeds = 40
	}
	for _, kernel := range []bool{false, true} {
		for _, loss := range []int{0, 10, 25} {
			name := fmt.Sprintf("compat/loss%d", loss)
			if kernel {
				name = fmt.Sprintf("kernel/loss%d", loss)
			}
			t.Run(name, func(t *testing.T) {
				for seed := range uint64(seeds) {
					runFTPSim(t, seed, loss, kernel)
				}
			})
		}
	}
}
