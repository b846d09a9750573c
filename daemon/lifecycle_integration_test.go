//go:build integration

package daemon

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/nftables"
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
