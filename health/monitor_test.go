package health

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var errRefused = fmt.Errorf("dial: %w", syscall.ECONNREFUSED)

// script is a check whose results the test hands over one at a time.
type script struct {
	mu       sync.Mutex
	feeds    map[Key]chan error
	inFlight map[Key]int
	calls    map[Key]int
	consumed map[Key]int
	overlap  atomic.Bool // a key had two checks in flight
}

func newScript() *script {
	return &script{feeds: map[Key]chan error{}, inFlight: map[Key]int{}, calls: map[Key]int{}, consumed: map[Key]int{}}
}

func (s *script) feed(k Key) chan error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.feeds[k] == nil {
		s.feeds[k] = make(chan error)
	}
	return s.feeds[k]
}

func (s *script) check(ctx context.Context, k Key, _ Spec) error {
	c := s.feed(k)
	s.mu.Lock()
	s.calls[k]++
	if s.inFlight[k]++; s.inFlight[k] > 1 {
		s.overlap.Store(true)
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight[k]--
		s.mu.Unlock()
	}()
	select {
	case err := <-c:
		s.mu.Lock()
		s.consumed[k]++
		s.mu.Unlock()
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *script) count(m map[Key]int, k Key) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return m[k]
}

func key(i int) Key {
	return Key{Service: "svc", Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 21)}
}

func spec(rise, fall int) Spec {
	return Spec{Type: "tcp", Interval: time.Millisecond, Timeout: time.Second, Rise: rise, Fall: fall}
}

// harness runs a monitor with a scripted check; its changes arrive on a
// channel.
type harness struct {
	t       *testing.T
	m       *Monitor
	s       *script
	changes chan Change
}

func start(t *testing.T, targets ...Target) *harness {
	h := &harness{t: t, s: newScript(), changes: make(chan Change, 1000)}
	h.m = New(func(c Change) { h.changes <- c })
	h.m.check = h.s.check
	h.m.Set(targets)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.m.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if h.s.overlap.Load() {
			t.Error("a target had two checks in flight")
		}
	})
	return h
}

// eventually polls cond until it holds.
func (h *harness) eventually(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (h *harness) status(k Key) Status {
	h.t.Helper()
	st, ok := h.m.Status(k)
	if !ok {
		h.t.Fatalf("no status for %v", k)
	}
	return st
}

// results hands k's next checks the results, waiting for each to count.
func (h *harness) results(k Key, errs ...error) {
	h.t.Helper()
	for _, err := range errs {
		n := h.status(k).Checks
		h.s.feed(k) <- err
		h.eventually("the check counted", func() bool { return h.status(k).Checks == n+1 })
	}
}

// inFlight waits for a check of k to be running.
func (h *harness) inFlight(k Key) {
	h.t.Helper()
	h.eventually("a check in flight", func() bool { return h.s.count(h.s.inFlight, k) == 1 })
}

func (h *harness) change(want Change) {
	h.t.Helper()
	select {
	case c := <-h.changes:
		if c.Key != want.Key || c.Up != want.Up || c.Cause != want.Cause {
			h.t.Fatalf("change %+v, want %+v", c, want)
		}
	case <-time.After(10 * time.Second):
		h.t.Fatalf("no change, want %+v", want)
	}
}

func (h *harness) up(k Key, want bool) {
	h.t.Helper()
	if st := h.status(k); st.Up != want {
		h.t.Fatalf("%v up %v, want %v", k, st.Up, want)
	}
}

func TestHysteresis(t *testing.T) {
	k := key(1)
	h := start(t, Target{Key: k, Spec: spec(2, 3), Up: true})
	// Flapping, never three failures or two passes in a row: no change.
	for range 5 {
		h.results(k, errRefused, errRefused, nil)
		h.up(k, true)
	}
	h.results(k, errRefused, errRefused)
	h.up(k, true)
	h.results(k, errRefused)
	h.up(k, false)
	h.change(Change{Key: k, Up: false, Cause: "refused"})
	for range 5 {
		h.results(k, nil, context.DeadlineExceeded)
		h.up(k, false)
	}
	h.results(k, nil, nil)
	h.up(k, true)
	h.change(Change{Key: k, Up: true})

	st := h.status(k)
	if st.Checks != 30 || st.LastCause != "timeout" || st.Failures["refused"] != 13 || st.Failures["timeout"] != 5 || st.LastFailure.IsZero() {
		t.Errorf("status %+v", st)
	}
	st.Failures["refused"] = 0 // a copy
	if h.status(k).Failures["refused"] != 13 {
		t.Error("Status handed out its map")
	}
	select {
	case c := <-h.changes:
		t.Errorf("extra change %+v", c)
	default:
	}
}

func TestSetKeepsState(t *testing.T) {
	k, other := key(1), key(2)
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	h := start(t, Target{Key: k, Spec: spec(2, 1), Up: true})
	h.results(k, errRefused)
	h.change(Change{Key: k, Up: false, Cause: "refused"})
	downSince := h.status(k).Since

	// Same spec: state and counters stay; a new key starts as told.
	h.m.Set([]Target{{Key: k, Spec: spec(2, 1), Up: true}, {Key: other, Spec: spec(1, 1), Up: false, Since: since}})
	if st := h.status(k); st.Up || st.Checks != 1 || !st.Since.Equal(downSince) {
		t.Fatalf("kept key: %+v", st)
	}
	if st := h.status(other); st.Up || !st.Since.Equal(since) {
		t.Fatalf("new key: %+v", st)
	}
	h.results(k, nil) // one pass of two
	h.up(k, false)

	// Spec changed: still down, the rise count starts again. The check in
	// flight was of the old spec: its result is ignored.
	s := spec(2, 1)
	s.Timeout = 2 * time.Second
	h.inFlight(k)
	h.m.Set([]Target{{Key: k, Spec: s}, {Key: other, Spec: spec(1, 1)}})
	n := h.s.count(h.s.consumed, k)
	h.s.feed(k) <- nil
	h.eventually("the old check's result", func() bool { return h.s.count(h.s.consumed, k) == n+1 })
	h.results(k, nil)
	h.up(k, false)
	h.results(k, nil)
	h.up(k, true)
	h.change(Change{Key: k, Up: true})
	if st := h.status(k); st.Checks != 4 {
		t.Errorf("checks %d, want 4 (the ignored one not counted)", st.Checks)
	}

	// Removed: no status; its check in flight is ignored.
	h.inFlight(k)
	h.m.Set([]Target{{Key: other, Spec: spec(1, 1)}})
	if _, ok := h.m.Status(k); ok {
		t.Error("removed key has a status")
	}
	h.s.feed(k) <- errRefused
	h.results(other, nil)
	h.change(Change{Key: other, Up: true})
	select {
	case c := <-h.changes:
		t.Errorf("extra change %+v", c)
	default:
	}
}

func TestNoneIsUp(t *testing.T) {
	k := key(1)
	h := start(t, Target{Key: k, Spec: Spec{Type: "none"}, Up: false})
	h.change(Change{Key: k, Up: true})
	h.up(k, true)
	if h.s.count(h.s.calls, k) != 0 {
		t.Error("type none was checked")
	}
}

// A check that hangs delays no other, and its target gets no second check.
func TestHangingCheck(t *testing.T) {
	hang, busy := key(1), key(2)
	h := start(t, Target{Key: hang, Spec: spec(1, 1), Up: true}, Target{Key: busy, Spec: spec(1, 1), Up: true})
	h.eventually("the hanging check", func() bool { return h.s.count(h.s.calls, hang) == 1 })
	for range 50 {
		h.results(busy, nil)
	}
	if n := h.s.count(h.s.calls, hang); n != 1 {
		t.Errorf("hanging target checked %d times", n)
	}
}

// onChange runs one call at a time, in the order the changes happened.
func TestChangeOrder(t *testing.T) {
	const n = 20
	var targets []Target
	for i := range n {
		targets = append(targets, Target{Key: key(i), Spec: spec(1, 1), Up: true})
	}
	var (
		mu      sync.Mutex
		got     []Change
		running atomic.Int32
		overlap atomic.Bool
	)
	s := newScript()
	m := New(func(c Change) {
		if running.Add(1) > 1 {
			overlap.Store(true)
		}
		time.Sleep(100 * time.Microsecond) // widen the window for an overlap
		mu.Lock()
		got = append(got, c)
		mu.Unlock()
		running.Add(-1)
	})
	m.check = s.check
	m.Set(targets)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			for j := range 10 {
				var err error
				if j%2 == 0 {
					err = errRefused
				}
				s.feed(key(i)) <- err
			}
		})
	}
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		l := len(got)
		mu.Unlock()
		if l == n*10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d changes, want %d", l, n*10)
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if overlap.Load() {
		t.Error("onChange called concurrently")
	}
	up := map[Key]bool{}
	for i, c := range got {
		if was, ok := up[c.Key]; (ok && was == c.Up) || (!ok && c.Up) {
			t.Fatalf("change %d: %+v repeats the state", i, c)
		}
		up[c.Key] = c.Up
		if i > 0 && c.At.Before(got[i-1].At) {
			t.Fatalf("change %d at %v before change %d at %v", i, c.At, i-1, got[i-1].At)
		}
	}
}

// Run returns when its context ends, once the checks in flight are done.
func TestRunStops(t *testing.T) {
	s := newScript()
	m := New(func(Change) {})
	m.check = s.check
	m.Set([]Target{{Key: key(1), Spec: spec(1, 1), Up: true}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	for s.count(s.calls, key(1)) == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if s.count(s.inFlight, key(1)) != 0 {
		t.Error("Run returned with a check in flight")
	}
}

func TestJitter(t *testing.T) {
	for range 1000 {
		if d := first(time.Second); d < 0 || d >= time.Second {
			t.Fatalf("first %v", d)
		}
		if d := next(time.Second); d < 900*time.Millisecond || d > 1100*time.Millisecond {
			t.Fatalf("next %v", d)
		}
	}
}

// Real tcp checks through the scheduler: every target gets checked, in
// step with its interval.
func TestMonitorTCP(t *testing.T) {
	l := listen(t)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	closed := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(closedPort(t)))
	changes := make(chan Change, 100)
	m := New(func(c Change) { changes <- c })
	var targets []Target
	for i := range 50 {
		targets = append(targets, Target{Key: key(i), Spec: Spec{Type: "tcp", Addr: addrOf(l), Interval: 20 * time.Millisecond, Timeout: time.Second, Rise: 1, Fall: 1}, Up: true})
	}
	bad := Key{Service: "svc", Addr: closed}
	targets = append(targets, Target{Key: bad, Spec: Spec{Type: "tcp", Addr: closed, Interval: 20 * time.Millisecond, Timeout: time.Second, Rise: 1, Fall: 2}, Up: true})
	m.Set(targets)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	select {
	case c := <-changes:
		if c.Key != bad || c.Up || c.Cause != "refused" {
			t.Fatalf("change %+v", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the closed port is not down")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		least := ^uint64(0)
		m.Each(func(k Key, s Status) {
			if k != bad {
				least = min(least, s.Checks)
				if !s.Up || s.LastLatency <= 0 {
					t.Errorf("%v: %+v", k, s)
				}
			}
		})
		if least >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a target got only %d checks", least)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A real exec check that hangs is killed at its timeout, while a tcp
// check of another target keeps its pace.
func TestMonitorHangingExec(t *testing.T) {
	l := listen(t)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	hang, fast := key(1), key(2)
	changes := make(chan Change, 10)
	m := New(func(c Change) { changes <- c })
	m.Set([]Target{
		{Key: hang, Spec: Spec{Type: "exec", Command: "sleep 100 & sleep 100", Interval: 10 * time.Millisecond, Timeout: 2 * time.Second, Rise: 1, Fall: 1}, Up: true},
		{Key: fast, Spec: Spec{Type: "tcp", Addr: addrOf(l), Interval: 10 * time.Millisecond, Timeout: time.Second, Rise: 1, Fall: 1}, Up: true},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		h, _ := m.Status(hang)
		f, _ := m.Status(fast)
		if f.Checks >= 20 {
			if h.Checks != 0 {
				t.Fatalf("the hanging check ended early: %+v", h)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tcp target: %d checks", f.Checks)
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case c := <-changes:
		if c.Key != hang || c.Up || c.Cause != "killed" {
			t.Fatalf("change %+v", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the hanging command was not killed")
	}
}
