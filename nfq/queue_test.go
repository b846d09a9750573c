package nfq

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pairQueue is a Queue on one end of a datagram socket pair; the test plays
// the kernel on the other end.
func pairQueue(t testing.TB, c Config) (*Queue, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	q, err := newQueue(fds[0], c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close(); unix.Close(fds[1]) })
	return q, fds[1]
}

// kernelSend writes one datagram of packet messages.
func kernelSend(t testing.TB, fd int, ps ...testPacket) {
	t.Helper()
	var b []byte
	for _, p := range ps {
		b = appendPacketMessage(b, p)
	}
	if _, err := unix.Write(fd, b); err != nil {
		t.Fatal(err)
	}
}

// kernelRecv reads one datagram of verdicts, waiting up to a second.
func kernelRecv(t testing.TB, fd int) []decodedVerdict {
	t.Helper()
	buf := make([]byte, 1<<18)
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		n, err := unix.Read(fd, buf)
		if err == unix.EAGAIN {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return decodeVerdicts(t, buf[:n])
	}
	t.Fatal("no verdict datagram")
	return nil
}

func kernelQuiet(t testing.TB, fd int) {
	t.Helper()
	time.Sleep(20 * time.Millisecond)
	buf := make([]byte, 1<<16)
	if n, err := unix.Read(fd, buf); err == nil {
		t.Fatalf("unexpected datagram: %+v", decodeVerdicts(t, buf[:n]))
	}
}

// TestQueueVerdicts: the verdicts given while a batch is handled leave in
// one datagram after it, in the order they were given; plain accepts at
// its end become one batch verdict when no packet waits for an answer.
func TestQueueVerdicts(t *testing.T) {
	q, k := pairQueue(t, Config{Num: 100})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var seen []Message
	done, err := q.Run(ctx, func(m *Message) {
		mu.Lock()
		seen = append(seen, *m)
		mu.Unlock()
		switch m.ID {
		case 2:
			q.Accept(m.ID, true, 0x20000, nil)
		case 3:
			q.SetVerdict(&Verdict{ID: m.ID, Verdict: VerdictAccept, Payload: []byte("new"), CT: []byte{8, 0, 1, 0, 0, 0, 0, 5}})
		case 4:
			q.Drop(m.ID)
		default:
			q.Accept(m.ID, false, 0, nil)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	kernelSend(t, k, testPacket{num: 100, id: 1, payload: []byte("a"), mark: 7, withMark: true},
		testPacket{num: 100, id: 2, payload: []byte("b")}, testPacket{num: 100, id: 3, payload: []byte("c")},
		testPacket{num: 100, id: 4, payload: []byte("d")}, testPacket{num: 100, id: 5, payload: []byte("e")},
		testPacket{num: 100, id: 6, payload: []byte("f")})
	got := kernelRecv(t, k)
	if len(got) != 5 {
		t.Fatalf("verdicts %+v", got)
	}
	if v := got[0]; v.typ != msgVerdict || v.id != 1 || v.hasMark || v.verdict != VerdictAccept || v.num != 100 {
		t.Errorf("first verdict %+v", v)
	}
	if v := got[1]; v.typ != msgVerdict || v.id != 2 || !v.hasMark || v.mark != 0x20000 || v.verdict != VerdictAccept {
		t.Errorf("mark verdict %+v", v)
	}
	if v := got[2]; v.id != 3 || string(v.payload) != "new" || !v.ctNested || len(v.ct) != 8 {
		t.Errorf("payload verdict %+v", v)
	}
	if v := got[3]; v.id != 4 || v.verdict != VerdictDrop {
		t.Errorf("drop %+v", v)
	}
	if v := got[4]; v.typ != msgVerdictBa || v.id != 6 || v.verdict != VerdictAccept || v.num != 100 {
		t.Errorf("batch verdict %+v", v)
	}
	mu.Lock()
	if len(seen) != 6 || seen[0].Mark != 7 || string(seen[4].Payload) != "e" {
		t.Errorf("handled %+v", seen)
	}
	mu.Unlock()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestQueueHeldPacket: while a packet waits for an answer from another
// goroutine, plain accepts go one by one (a batch verdict would answer the
// held packet too); the held packet's verdict, given while the reader
// waits, goes out at once.
func TestQueueHeldPacket(t *testing.T) {
	q, k := pairQueue(t, Config{Num: 1})
	held := make(chan uint32, 1)
	done, err := q.Start(context.Background(), func(id uint32, pkt []byte, mark uint32) {
		if id == 10 {
			held <- id
			return
		}
		q.Accept(id, false, 0, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	kernelSend(t, k, testPacket{id: 10, payload: []byte{1}})
	kernelSend(t, k, testPacket{id: 11, payload: []byte{1}}, testPacket{id: 12, payload: []byte{1}})
	var got []decodedVerdict
	for len(got) < 2 {
		got = append(got, kernelRecv(t, k)...)
	}
	for i, v := range got {
		if v.typ != msgVerdict || v.id != uint32(11+i) {
			t.Fatalf("verdicts %+v", got)
		}
	}
	kernelQuiet(t, k)
	id := <-held
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := q.Drop(id); err != nil {
			t.Error(err)
		}
	})
	wg.Wait()
	got = kernelRecv(t, k)
	if len(got) != 1 || got[0].id != 10 || got[0].verdict != VerdictDrop {
		t.Fatalf("held verdict %+v", got)
	}
	// Nothing waits any more: accepts batch again.
	kernelSend(t, k, testPacket{id: 13, payload: []byte{1}}, testPacket{id: 14, payload: []byte{1}})
	got = kernelRecv(t, k)
	if len(got) != 1 || got[0].typ != msgVerdictBa || got[0].id != 14 {
		t.Fatalf("verdicts %+v", got)
	}
	q.Close()
	if err := <-done; err != nil {
		t.Fatalf("after Close: %v", err)
	}
	if err := q.Accept(1, false, 0, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("verdict after Close: %v", err)
	}
}

// TestQueueNoBatchVerdict: with NoBatchVerdict every accept is its own
// message; a kernel error answer is counted; a malformed datagram too.
func TestQueueNoBatchVerdict(t *testing.T) {
	q, k := pairQueue(t, Config{Num: 1, NoBatchVerdict: true, NoRecvmmsg: true})
	done, err := q.Start(context.Background(), func(id uint32, pkt []byte, mark uint32) { q.Accept(id, false, 0, nil) })
	if err != nil {
		t.Fatal(err)
	}
	kernelSend(t, k, testPacket{id: 1, payload: []byte{1}}, testPacket{id: 2, payload: []byte{1}})
	if got := kernelRecv(t, k); len(got) != 2 || got[0].typ != msgVerdict || got[1].id != 2 {
		t.Fatalf("verdicts %+v", got)
	}
	errMsg := make([]byte, nlmsgHdrLen+4+nlmsgHdrLen)
	errMsg[0] = byte(len(errMsg))
	errMsg[4] = nlmsgError
	errMsg[16], errMsg[17], errMsg[18], errMsg[19] = 0xfe, 0xff, 0xff, 0xff // -ENOENT
	unix.Write(k, errMsg)
	unix.Write(k, []byte{1, 2, 3})
	for deadline := time.Now().Add(time.Second); q.VerdictErrors.Load() == 0 || q.Malformed.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("verdict errors %d, malformed %d", q.VerdictErrors.Load(), q.Malformed.Load())
		}
	}
	q.Close()
	<-done
}

// TestQueueVerdictsFromManyGoroutines: verdicts from other goroutines while
// the reader handles batches (run with -race).
func TestQueueVerdictsFromManyGoroutines(t *testing.T) {
	q, k := pairQueue(t, Config{Num: 1})
	ids := make(chan uint32, 1024)
	done, err := q.Start(context.Background(), func(id uint32, pkt []byte, mark uint32) {
		if id%2 == 0 {
			ids <- id
			return
		}
		q.Accept(id, true, id, pkt)
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for id := range ids {
				q.Accept(id, false, 0, nil)
			}
		})
	}
	const total = 400
	answered := map[uint32]bool{}
	reader := make(chan struct{})
	go func() {
		defer close(reader)
		buf := make([]byte, 1<<18)
		for deadline := time.Now().Add(5 * time.Second); len(answered) < total && time.Now().Before(deadline); {
			n, err := unix.Read(k, buf)
			if err != nil {
				time.Sleep(time.Millisecond)
				continue
			}
			for _, v := range decodeVerdicts(t, buf[:n]) {
				if v.typ == msgVerdictBa {
					for id := uint32(1); id <= v.id; id++ {
						answered[id] = true
					}
					continue
				}
				answered[v.id] = true
			}
		}
	}()
	for id := uint32(1); id <= total; id += 4 {
		kernelSend(t, k, testPacket{id: id, payload: []byte{1}}, testPacket{id: id + 1, payload: []byte{2}},
			testPacket{id: id + 2, payload: []byte{3}}, testPacket{id: id + 3, payload: []byte{4}})
	}
	<-reader
	if len(answered) != total {
		t.Errorf("%d of %d answered", len(answered), total)
	}
	q.Close()
	<-done
	close(ids)
	wg.Wait()
}

// TestQueueSteadyStateAllocs: receiving a batch, handing each packet over
// and sending the verdicts allocates nothing, with plain accepts, marks
// and altered packets.
func TestQueueSteadyStateAllocs(t *testing.T) {
	q, k := pairQueue(t, Config{Num: 1})
	var batch []byte
	for i := range 16 {
		batch = appendPacketMessage(batch, testPacket{id: uint32(i), payload: make([]byte, 64), withMark: true})
	}
	alt := make([]byte, 64)
	h := func(m *Message) {
		switch m.ID % 3 {
		case 0:
			q.Accept(m.ID, false, 0, nil)
		case 1:
			q.Accept(m.ID, true, 1, nil)
		default:
			copy(alt, m.Payload)
			q.Accept(m.ID, false, 0, alt)
		}
	}
	sink := make([]byte, 1<<18)
	step := func() {
		if _, err := unix.Write(k, batch); err != nil {
			t.Fatal(err)
		}
		if err := q.readOnce(h); err != nil {
			t.Fatal(err)
		}
		if _, err := unix.Read(k, sink); err != nil {
			t.Fatal(err)
		}
	}
	step()
	if n := testing.AllocsPerRun(200, step); n != 0 {
		t.Errorf("%.1f allocations per batch of 16", n)
	}
}

// BenchmarkQueuePath: one packet through the queue (receive in batches of
// 16, parse, plain accept, batched verdict) over a socket pair.
func BenchmarkQueuePath(b *testing.B) {
	q, k := pairQueue(b, Config{Num: 1})
	var batch []byte
	for i := range 16 {
		batch = appendPacketMessage(batch, testPacket{id: uint32(i), payload: make([]byte, 64), withMark: true})
	}
	h := func(m *Message) { q.Accept(m.ID, false, 0, nil) }
	sink := make([]byte, 1<<18)
	b.ReportAllocs()
	for b.Loop() {
		unix.Write(k, batch)
		if err := q.readOnce(h); err != nil {
			b.Fatal(err)
		}
		unix.Read(k, sink)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*16), "ns/packet")
}

func BenchmarkParseQueueMessage(b *testing.B) {
	msg := appendPacketMessage(nil, testPacket{id: 1, payload: make([]byte, 64), withMark: true, withCT: true, ct: make([]byte, 64)})
	var m Message
	b.ReportAllocs()
	for b.Loop() {
		if err := ParseQueueMessage(msg, &m); err != nil {
			b.Fatal(err)
		}
	}
}
