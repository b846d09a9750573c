package daemon

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/health"
)

// TestHealthTargets: each configured server's check as the monitor takes
// it (the check's port, the credentials file read), in the roster's state.
func TestHealthTargets(t *testing.T) {
	dir := t.TempDir()
	creds := filepath.Join(dir, "creds")
	if err := os.WriteFile(creds, []byte("probe:s3:cret\nignored\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := mustParse(t, `
services:
  - name: ftp
    vip: 198.51.100.10:21
    scheduler: rr
    health_check:
      type: ftp
      interval: 2s
      timeout: 1s
      credentials_file: `+creds+`
    real_servers:
      - address: 10.0.0.1:21
      - address: 10.0.0.2:21
        health_check:
          type: tcp
          port: 2121
`)
	since := time.Unix(1000, 0)
	ro := roster{{Service: "ftp", Addr: netip.MustParseAddrPort("10.0.0.1:21")}: {up: false, since: since}}
	ts, err := healthTargets(cfg, ro)
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 2 {
		t.Fatalf("%d targets", len(ts))
	}
	want := health.Spec{Type: "ftp", Addr: netip.MustParseAddrPort("10.0.0.1:21"), Interval: 2 * time.Second, Timeout: time.Second,
		Rise: 2, Fall: 3, User: "probe", Password: "s3:cret", Path: "/", Status: 200}
	if ts[0].Spec != want || ts[0].Up || !ts[0].Since.Equal(since) {
		t.Errorf("first target %+v, want spec %+v, down since %v", ts[0], want, since)
	}
	if s := ts[1].Spec; s.Type != "tcp" || s.Addr != netip.MustParseAddrPort("10.0.0.2:2121") || !ts[1].Up {
		t.Errorf("second target %+v", ts[1])
	}

	// A credentials file gone or without a user: the start or reload
	// fails, naming the server.
	for _, content := range []string{"", ":nouser\n", "no colon\n"} {
		if err := os.WriteFile(creds, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := healthTargets(cfg, ro); err == nil || !strings.Contains(err.Error(), "service ftp, real server 10.0.0.1:21") {
			t.Errorf("credentials %q: %v", content, err)
		}
	}
	os.Remove(creds)
	if _, err := healthTargets(cfg, ro); err == nil || !strings.Contains(err.Error(), creds) {
		t.Errorf("no credentials file: %v", err)
	}
}
