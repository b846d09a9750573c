//go:build integration

package integration

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// TestSecondDaemonLeavesTheFirstAlone: a second nfhelperd started in the
// same namespace finds the queues taken and stops with a clear error,
// before it could replace (or, leaving, remove) the running daemon's table.
func TestSecondDaemonLeavesTheFirstAlone(t *testing.T) {
	needDaemon(t)
	tp := harness.tp
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := tp.CommandContext(ctx, tp.Router, harness.daemonBin, "--config", harness.config)
	cmd.Env = append(cmd.Environ(), "NFHELPER_SOCKET="+filepath.Join(t.TempDir(), "second.sock"))
	out, err := cmd.CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("second daemon: err %v (timeout: %v), want a quick failure:\n%s", err, ctx.Err() != nil, out)
	}
	if !strings.Contains(string(out), "held by another process") {
		t.Errorf("second daemon's error does not say why:\n%s", out)
	}
	if strings.Contains(string(out), "msg=ready") {
		t.Errorf("second daemon got ready:\n%s", out)
	}
	if exists, _, err := tp.TableExists(ctx); err != nil || !exists {
		t.Fatalf("the running daemon's table is gone (%v)", err)
	}
	r := runFtpget(t, tp.Client, net.JoinHostPort(topo.VIP4, "21"), "pasv", "small.bin", 1)
	if r.results[0].SHA256 != tp.Files["small.bin"] {
		t.Errorf("transfer after the second daemon: sha256 %s", r.results[0].SHA256)
	}
}
