package health

import (
	"container/heap"
	"context"
	"maps"
	"sync"
	"time"
)

// Monitor checks targets and reports their changes. One goroutine (Run)
// schedules every check; each check runs in a short goroutine of its own,
// so a hanging one delays no other, and a target never has two in flight.
type Monitor struct {
	onChange func(Change)
	check    func(context.Context, Key, Spec) error // Check; tests script it
	wake     chan struct{}                          // Set changed the schedule or queued changes
	results  chan result

	mu      sync.Mutex
	targets map[Key]*target
	sched   schedule
	changes []Change // for onChange, in order
}

type target struct {
	key   Key
	spec  Spec
	gen   uint64 // counts Spec changes: a check of an older Spec is ignored
	up    bool
	since time.Time
	// in a row, for rise and fall
	passes, fails int

	due     time.Time
	index   int // in sched, or -1
	running bool

	checks      uint64
	latency     time.Duration
	lastFailure time.Time
	lastCause   string
	failures    map[string]uint64
}

type result struct {
	t       *target
	gen     uint64
	err     error
	start   time.Time
	latency time.Duration
}

// New returns a monitor that calls onChange (from Run's goroutine, one call
// at a time, in order) when a target goes up or down. onChange must not
// block long: checks' results wait for it.
func New(onChange func(Change)) *Monitor {
	return &Monitor{
		onChange: onChange,
		check:    Check,
		wake:     make(chan struct{}, 1),
		results:  make(chan result),
		targets:  make(map[Key]*target),
	}
}

// Set replaces the targets. A Key that stays keeps its state and
// statistics; if its Spec changed, its rise/fall count starts again and
// its next check comes within the new interval. A new Key starts in its
// Target's state. A removed Key is no longer checked; a check of it in
// flight is ignored. Type "none" is always up: a target set to it while
// down comes up (a Change says so).
func (m *Monitor) Set(targets []Target) {
	now := time.Now()
	m.mu.Lock()
	keep := make(map[Key]bool, len(targets))
	for _, tg := range targets {
		keep[tg.Key] = true
		t := m.targets[tg.Key]
		switch {
		case t == nil:
			t = &target{key: tg.Key, spec: tg.Spec, up: tg.Up, since: tg.Since, index: -1, failures: map[string]uint64{}}
			if t.since.IsZero() {
				t.since = now
			}
			m.targets[tg.Key] = t
			m.arm(t, now.Add(first(t.spec.interval())))
		case t.spec != tg.Spec:
			t.spec = tg.Spec
			t.gen++
			t.passes, t.fails = 0, 0
			if !t.running {
				m.sched.remove(t)
				m.arm(t, now.Add(first(t.spec.interval())))
			}
		}
		if t.spec.Type == "none" && !t.up {
			t.up, t.since = true, now
			m.changes = append(m.changes, Change{Key: t.key, Up: true, At: now})
		}
	}
	for k, t := range m.targets {
		if !keep[k] {
			m.sched.remove(t)
			delete(m.targets, k)
		}
	}
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// arm schedules t's next check, unless it is never checked.
func (m *Monitor) arm(t *target, due time.Time) {
	if t.spec.Type != "none" {
		m.sched.add(t, due)
	}
}

// Run schedules the checks until ctx ends, then waits for the checks in
// flight (cancelled with ctx) and returns.
func (m *Monitor) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		m.mu.Lock()
		now := time.Now()
		for len(m.sched) > 0 && !m.sched[0].due.After(now) {
			t := heap.Pop(&m.sched).(*target)
			t.running = true
			wg.Add(1)
			go m.run(ctx, &wg, t, t.gen, t.spec)
		}
		wait := time.Hour
		if len(m.sched) > 0 {
			wait = m.sched[0].due.Sub(now)
		}
		changes := m.changes
		m.changes = nil
		m.mu.Unlock()
		for _, c := range changes {
			m.onChange(c)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-m.wake:
		case r := <-m.results:
			m.done(r)
		}
	}
}

// run checks t in a goroutine of its own.
func (m *Monitor) run(ctx context.Context, wg *sync.WaitGroup, t *target, gen uint64, s Spec) {
	defer wg.Done()
	start := time.Now()
	err := m.check(ctx, t.key, s)
	select {
	case m.results <- result{t: t, gen: gen, err: err, start: start, latency: time.Since(start)}:
	case <-ctx.Done():
	}
}

// done counts a check's result and schedules the next.
func (m *Monitor) done(r result) {
	t := r.t
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.targets[t.key] != t {
		return // removed
	}
	t.running = false
	if r.gen != t.gen {
		m.arm(t, now.Add(first(t.spec.interval())))
		return
	}
	t.checks++
	t.latency = r.latency
	if r.err == nil {
		t.passes++
		t.fails = 0
	} else {
		t.fails++
		t.passes = 0
		t.lastFailure, t.lastCause = now, Cause(r.err)
		t.failures[t.lastCause]++
	}
	switch {
	case t.up && t.fails >= max(1, t.spec.Fall):
		t.up, t.since = false, now
		m.changes = append(m.changes, Change{Key: t.key, Up: false, Cause: t.lastCause, At: now})
	case !t.up && t.passes >= max(1, t.spec.Rise):
		t.up, t.since = true, now
		m.changes = append(m.changes, Change{Key: t.key, Up: true, At: now})
	}
	due := r.start.Add(next(t.spec.interval()))
	if due.Before(now) {
		due = now
	}
	m.arm(t, due)
}

// Status is k's state and statistics.
func (m *Monitor) Status(k Key) (Status, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.targets[k]
	if t == nil {
		return Status{}, false
	}
	return t.status(), true
}

// Each calls f with every target's status, outside the monitor's lock.
func (m *Monitor) Each(f func(Key, Status)) {
	type ks struct {
		k Key
		s Status
	}
	m.mu.Lock()
	all := make([]ks, 0, len(m.targets))
	for k, t := range m.targets {
		all = append(all, ks{k, t.status()})
	}
	m.mu.Unlock()
	for _, x := range all {
		f(x.k, x.s)
	}
}

func (t *target) status() Status {
	return Status{
		Type: t.spec.Type, Up: t.up, Since: t.since, Checks: t.checks,
		LastLatency: t.latency, LastFailure: t.lastFailure, LastCause: t.lastCause,
		Failures: maps.Clone(t.failures),
	}
}
