//go:build integration

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestKernelRestartKeepsHelping (kernel datapath only): the daemon is
// killed during a transfer and started again; the control connection's
// next PASV, after the restart, is still answered through the VIP. The
// connection's helper stays registered in the kernel with its helper data
// (read positions), from which the new daemon adopts the connection; the
// kernel's seqadj kept the earlier rewrite's offset all along.
func TestKernelRestartKeepsHelping(t *testing.T) {
	d := needDaemon(t)
	if !kernelDatapath() {
		t.Skip("compat datapath: a restarted daemon does not know running connections")
	}
	forgetOutageAfter(t)
	tp := harness.tp
	// The client's last command waits until the new daemon runs: while
	// none does, nothing can help it.
	dir := t.TempDir()
	script, ready := filepath.Join(dir, "slowftp.py"), filepath.Join(dir, "restarted")
	wait := "while not __import__('os').path.exists(" + fmt.Sprintf("%q", ready) + "): time.sleep(0.1)\nlast = small()"
	if err := os.WriteFile(script, []byte(strings.Replace(slowClient, "last = small()", wait, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	running := startSlowTransfer(t, script, 0)
	select {
	case <-running.started:
	case <-running.done:
		t.Fatalf("transfer ended before the restart: %v\n%s", running.err, running.trace)
	}
	harness.mu.Lock()
	harness.stopped = true
	harness.mu.Unlock()
	if err := d.Kill(); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	d2 := restartAfterKill(t)
	if err := os.WriteFile(ready, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	<-running.done
	if running.err != nil || running.result.SHA256 != tp.Files["big.bin"] || running.result.Last == "" {
		t.Fatalf("session across the restart: %v, %+v\n%s", running.err, running.result, tailString(running.trace, 3000))
	}
	// Both 227 replies, before and after the restart, named the VIP.
	pasv := regexp.MustCompile(`227 Entering Passive[^(]*\(([0-9,]+)\)`).FindAllStringSubmatch(running.trace, -1)
	want := strings.ReplaceAll("198.51.100.10", ".", ",") + ","
	if len(pasv) < 3 {
		t.Fatalf("%d 227 replies in the trace, want 3:\n%s", len(pasv), tailString(running.trace, 3000))
	}
	for i, m := range pasv {
		if !strings.HasPrefix(m[1], want) {
			t.Errorf("227 reply %d names %s, not the VIP", i, m[1])
		}
	}
	if !waitLog(t, d2, regexp.MustCompile(`(?m)^.*connection restored from the kernel's helper data.*$`)) {
		t.Errorf("the new daemon restored no connection; log:\n%s", tailString(d2.Log(), 3000))
	}
}
