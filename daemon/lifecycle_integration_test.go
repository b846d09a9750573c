//go:build integration

package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"runtime"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/nfq"
)

// TestStopOrder: Stop removes the table before anything closes (its rules
// queue to the queues), ends the background work before the datapath's
// sockets close, unregisters the helper only once the table, whose ct
// helper object holds it, is gone, and logs the stop.
func TestStopOrder(t *testing.T) {
	ns, _ := ctNamespace(t)
	conn, err := nftables.New(nftables.WithNetNSFd(ns))
	if err != nil {
		t.Fatal(err)
	}
	conn.AddTable(&nftables.Table{Name: tableName, Family: nftables.TableFamilyINet})
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	dp := &fakeDatapath{state: func() string {
		if _, err := conn.ListTableOfFamily(tableName, nftables.TableFamilyINet); err != nil {
			return "no table"
		}
		return "table"
	}}
	d := started(t, dp, slog.New(slog.NewTextHandler(&logs, nil)))
	d.nft = conn
	d.Stop()
	want := "run ended (no table), close (no table), unregister (no table)"
	if got := strings.Join(dp.calls, ", "); got != want {
		t.Errorf("calls %s, want %s", got, want)
	}
	if !strings.Contains(logs.String(), "msg=stopping") || strings.Contains(logs.String(), "handing over") {
		t.Errorf("log:\n%s", logs.String())
	}
}

// TestStartUndoes: a start that fails at a step gives back what the steps
// before took: here the second queue is held, and the first, which it
// bound, can be bound again. (The probe and the queues are the host's, as
// for nfhelperd --check: this runs under the integration suite's lock.)
func TestStartUndoes(t *testing.T) {
	const first = 64000
	held, err := nfq.OpenQueue(first+1, 16)
	if err != nil {
		t.Skipf("cannot bind a queue here: %v", err)
	}
	defer held.Close()
	var logs bytes.Buffer
	d := New(&config.Config{Queue: config.Queue{First: first, Count: 2}}, Options{Log: slog.New(slog.NewTextHandler(&logs, nil))})
	err = d.Start(context.Background())
	if !errors.Is(err, nfq.ErrQueueHeld) {
		t.Fatalf("start: %v, want the held queue's error", err)
	}
	if strings.Contains(logs.String(), "msg=ready") {
		t.Errorf("ready after a failed start:\n%s", logs.String())
	}
	q, err := nfq.OpenQueue(first, 16)
	if err != nil {
		t.Fatalf("queue %d still bound after the failed start: %v", first, err)
	}
	q.Close()
	// Not closed by the garbage collector meanwhile (the queue's file
	// has a finalizer): by the daemon.
	runtime.KeepAlive(d)
}
