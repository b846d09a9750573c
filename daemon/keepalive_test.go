package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeBeat fails its first beats.
type fakeBeat struct {
	calls, fails atomic.Int32
}

func (f *fakeBeat) beat() error {
	if f.calls.Add(1) <= f.fails.Load() {
		return errors.New("no route")
	}
	return nil
}

// TestKeepAlive: the element is renewed at every tick, a run of failures
// is logged once and its end once, and nothing is renewed after halt.
func TestKeepAlive(t *testing.T) {
	var logs bytes.Buffer
	f := &fakeBeat{}
	f.fails.Store(3)
	k := startKeepAlive(context.Background(), f.beat, 5*time.Millisecond, slog.New(slog.NewTextHandler(&logs, nil)))
	for deadline := time.Now().Add(5 * time.Second); f.calls.Load() < 6; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("renewed %d times", f.calls.Load())
		}
	}
	k.halt()
	n := f.calls.Load()
	time.Sleep(30 * time.Millisecond)
	if f.calls.Load() != n {
		t.Errorf("renewed after halt")
	}
	k.halt() // again: nothing to wait for
	if out := logs.String(); strings.Count(out, "not renewed") != 1 || strings.Count(out, "renewed again") != 1 {
		t.Errorf("log:\n%s", out)
	}
}
