package daemon

import (
	"bytes"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	_ "github.com/nfhelper/nfhelper/helpers/ftp"
	_ "github.com/nfhelper/nfhelper/helpers/tftp"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
	"github.com/nfhelper/nfhelper/metrics"
	"github.com/nfhelper/nfhelper/nfq/nfqtest"
	"github.com/nfhelper/nfhelper/nfq/packet"
	"github.com/nfhelper/nfhelper/nft"
)

// fakeQueue records verdicts.
type fakeQueue struct {
	accepted, dropped, altered []uint32
	marks                      map[uint32]uint32 // by id, for verdicts that set the mark
}

func (f *fakeQueue) Accept(id uint32, setMark bool, mark uint32, pkt []byte) error {
	f.accepted = append(f.accepted, id)
	if setMark {
		if f.marks == nil {
			f.marks = map[uint32]uint32{}
		}
		f.marks[id] = mark
	}
	if pkt != nil {
		f.altered = append(f.altered, id)
	}
	return nil
}

func (f *fakeQueue) Drop(id uint32) error { f.dropped = append(f.dropped, id); return nil }

func (f *fakeQueue) AcceptCT(id uint32, pkt []byte, ct []byte) error {
	return f.Accept(id, false, 0, pkt)
}

func (f *fakeQueue) Flush() error { return nil }

// newHandler is queue 100's handler on the compat datapath, as the daemon
// builds it.
func newHandler(q verdicter, w *ipvs.Worker, stats *ipvs.Stats, dp datapath, mx *metrics.Metrics, log *slog.Logger) func(id uint32, pkt []byte, mark uint32) {
	if dp == nil {
		dp = &compatPath{}
	}
	h := &handler{q: q, num: 100, w: w, stats: stats, dp: dp, mx: mx, log: log}
	return func(id uint32, pkt []byte, mark uint32) { h.handle(id, pkt, mark, nil) }
}

// panicky is a helper with a bug.
type panicky struct{}

func (panicky) Name() string                                            { return "panicky" }
func (panicky) Bind(*ipvs.Session, *ipvs.Policy) ipvs.ConnHelper        { return panicky{} }
func (panicky) Inspect(ipvs.Direction, []byte, int, bool, *ipvs.Result) { panic("bug") }

// panickyEngine has one FTP service on vip, at rs, whose helper panics;
// it logs to log.
func panickyEngine(t *testing.T, log *slog.Logger) (client, vip, rs netip.AddrPort, e *ipvs.Engine) {
	t.Helper()
	ap := netip.MustParseAddrPort
	client, vip, rs = ap("203.0.113.2:40000"), ap("198.51.100.10:21"), ap("10.0.0.11:21")
	svc, err := ipvs.NewService("ftp", vip, "rr", panicky{}, []*ipvs.RealServer{{Addr: rs, Weight: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if e, err = ipvs.NewEngine([]*ipvs.Service{svc}, ipvs.Options{MarkMask: markMask, Log: log}); err != nil {
		t.Fatal(err)
	}
	return client, vip, rs, e
}

// TestHelperPanic: a helper that panics costs its connection the help, not
// a packet: every packet is accepted unmodified and the panics counted.
func TestHelperPanic(t *testing.T) {
	var logs bytes.Buffer
	client, vip, rs, e := panickyEngine(t, slog.New(slog.NewTextHandler(&logs, nil)))
	q := &fakeQueue{}
	h := newHandler(q, e.NewWorker(), &e.Stats, nil, metrics.New(e, nil, nil), slog.New(slog.NewTextHandler(&logs, nil)))
	seg := func(src, dst netip.AddrPort, seq uint32, flags uint8, payload string) []byte {
		return nfqtest.Build(nfqtest.Segment{Src: src, Dst: dst, Seq: seq, Ack: 1, Flags: flags, Payload: []byte(payload)})
	}
	h(1, seg(client, vip, 100, packet.FlagSYN, ""), 0)
	h(2, seg(rs, client, 5000, packet.FlagSYN|packet.FlagACK, ""), 0)
	h(3, seg(rs, client, 5001, packet.FlagPSH|packet.FlagACK, "220 hi\r\n"), 0) // the helper panics
	h(4, seg(rs, client, 5009, packet.FlagPSH|packet.FlagACK, "220 hi\r\n"), 0) // the connection goes on, unread
	if len(q.accepted) != 4 || len(q.dropped) != 0 || len(q.altered) != 0 {
		t.Errorf("accepted %v, dropped %v, altered %v; want all four accepted as they were", q.accepted, q.dropped, q.altered)
	}
	if e.Stats.Panics.Load() != 1 || !strings.Contains(logs.String(), "helper panic") {
		t.Errorf("panics %d, log:\n%s", e.Stats.Panics.Load(), logs.String())
	}
}

// TestHandlerRecoversPanics: a panic anywhere on the per-packet path (here a
// worker that is not there) passes the packet on unmodified, and the
// handler goes on.
func TestHandlerRecoversPanics(t *testing.T) {
	var stats ipvs.Stats
	var logs bytes.Buffer
	q := &fakeQueue{}
	h := newHandler(q, nil, &stats, nil, metrics.New(nil, nil, nil), slog.New(slog.NewTextHandler(&logs, nil)))
	h(7, []byte{0x45}, 0)
	h(8, []byte{0x45}, 0)
	if len(q.accepted) != 2 || len(q.altered) != 0 || stats.Panics.Load() != 2 || strings.Count(logs.String(), "worker panic") != 2 {
		t.Errorf("accepted %v, panics %d, log:\n%s", q.accepted, stats.Panics.Load(), logs.String())
	}
}

// TestBacklogDoesNotStall: when the datapath is too far behind to take a
// data channel, the announcing packet goes on (rewritten) without it.
func TestBacklogDoesNotStall(t *testing.T) {
	ap := netip.MustParseAddrPort
	client, vip, rs := ap("203.0.113.2:40000"), ap("198.51.100.10:21"), ap("10.0.0.11:21")
	e := oneService(t, vip, "rr", "ftp", &ipvs.RealServer{Addr: rs, Weight: 1})
	q := &fakeQueue{}
	full := &compatPath{reqs: make(chan *pending)} // nobody reads: always full
	handle := newHandler(q, e.NewWorker(), &e.Stats, full, metrics.New(e, nil, nil), slog.New(slog.NewTextHandler(io.Discard, nil)))
	seg := func(src, dst netip.AddrPort, seq, ack uint32, flags uint8, payload string) []byte {
		return nfqtest.Build(nfqtest.Segment{Src: src, Dst: dst, Seq: seq, Ack: ack, Flags: flags, Payload: []byte(payload)})
	}
	handle(1, seg(client, vip, 100, 0, packet.FlagSYN, ""), 0)
	handle(2, seg(rs, client, 5000, 101, packet.FlagSYN|packet.FlagACK, ""), 0)
	handle(3, seg(client, rs, 101, 5001, packet.FlagPSH|packet.FlagACK, "PASV\r\n"), 0)
	handle(4, seg(rs, client, 5001, 107, packet.FlagPSH|packet.FlagACK, "227 Entering Passive Mode (10,0,0,11,156,64).\r\n"), 0)
	if len(q.accepted) != 4 || q.altered[len(q.altered)-1] != 4 {
		t.Errorf("accepted %v altered %v: the 227 must go on, rewritten", q.accepted, q.altered)
	}
	if e.Stats.Backlogged.Load() != 1 {
		t.Errorf("backlogged %d", e.Stats.Backlogged.Load())
	}
}

// TestHandlerClearsUnseen: every verdict on a packet queued with
// nft.UnseenMark clears that bit and keeps the others, whatever the worker
// decided or if it panicked: a bit left set would make the kernel take the
// segment for one that bypassed a dead daemon.
func TestHandlerClearsUnseen(t *testing.T) {
	client, _, rs, e := panickyEngine(t, nil)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	q := &fakeQueue{}
	h := newHandler(q, e.NewWorker(), &e.Stats, nil, metrics.New(e, nil, nil), log)
	const other = 0x5
	h(1, nfqtest.Build(nfqtest.Segment{Src: rs, Dst: client, Seq: 1, Ack: 1, Flags: packet.FlagACK, Payload: []byte("x")}), nft.UnseenMark|other) // no connection: a plain accept
	h(2, []byte{0x45}, nft.UnseenMark|other)                                                                                                      // unparsed
	broken := newHandler(q, nil, &e.Stats, nil, metrics.New(nil, nil, nil), log)
	broken(3, []byte{0x45}, nft.UnseenMark|other) // a panic on the way
	h(4, nfqtest.Build(nfqtest.Segment{Src: rs, Dst: client, Seq: 1, Ack: 1, Flags: packet.FlagACK, Payload: []byte("x")}), other)
	for _, id := range []uint32{1, 2, 3} {
		if m, ok := q.marks[id]; !ok || m != other {
			t.Errorf("packet %d: verdict mark %#x (set: %v), want %#x", id, m, ok, other)
		}
	}
	if m, ok := q.marks[4]; ok {
		t.Errorf("packet 4, queued without the bit: verdict set mark %#x", m)
	}
}

// nullQueue takes verdicts and keeps nothing.
type nullQueue struct{}

func (nullQueue) Accept(uint32, bool, uint32, []byte) error { return nil }
func (nullQueue) Drop(uint32) error                         { return nil }
func (nullQueue) AcceptCT(uint32, []byte, []byte) error     { return nil }
func (nullQueue) Flush() error                              { return nil }

// TestHandlerDoesNotAllocate: the per-packet path itself allocates
// nothing, on either datapath, for a packet that needs no more than its
// verdict.
func TestHandlerDoesNotAllocate(t *testing.T) {
	_, _, rs, e := panickyEngine(t, nil)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	pkt := nfqtest.Build(nfqtest.Segment{Src: rs, Dst: netip.MustParseAddrPort("192.0.2.1:1"), Seq: 1, Ack: 1, Flags: packet.FlagACK, Payload: []byte("x")})
	for _, name := range []string{kernel.DatapathCompat, kernel.DatapathKernel} {
		h := &handler{q: nullQueue{}, num: 100, w: e.NewWorker(), stats: &e.Stats, dp: newDatapath(name, log), mx: metrics.New(e, nil, nil), log: log}
		if n := testing.AllocsPerRun(100, func() { h.handle(1, pkt, nft.UnseenMark, nil) }); n != 0 {
			t.Errorf("%s: %v allocations per packet", name, n)
		}
	}
}

// TestHandlerPicksUpSynAck: on the compat datapath the SYN-ACK of a
// kernel-scheduled FTP connection, queued with UnseenMark, goes on with
// its MSS lowered and the bit cleared; the connection is the engine's.
func TestHandlerPicksUpSynAck(t *testing.T) {
	ap := netip.MustParseAddrPort
	client, vip, rs := ap("203.0.113.2:40000"), ap("198.51.100.10:21"), ap("10.0.0.11:21")
	e := oneService(t, vip, "mh", "ftp", &ipvs.RealServer{Addr: rs, Weight: 1})
	q := &fakeQueue{}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := newHandler(q, e.NewWorker(), &e.Stats, nil, metrics.New(e, nil, nil), log)
	h(1, nfqtest.Build(nfqtest.Segment{Src: rs, Dst: client, Seq: 5000, Ack: 101, Flags: packet.FlagSYN | packet.FlagACK,
		Options: []byte{2, 4, 0x05, 0xb4}}), nft.UnseenMark|0x10)
	if len(q.altered) != 1 || q.marks[1] != 0x10 {
		t.Errorf("altered %v, mark %#x", q.altered, q.marks[1])
	}
	if c := e.Table.LookupVIP(client, vip); c == nil || c.Server != rs {
		t.Errorf("connection %+v", c)
	}
}
