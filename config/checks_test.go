package config_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/config"
)

// TestChecksValid: every check type, per-server overrides and the service
// keys, as the docs show them, pass; the computed fields are set.
func TestChecksValid(t *testing.T) {
	creds := filepath.Join(t.TempDir(), "ftp-check")
	if err := os.WriteFile(creds, []byte("check:s3cr:et\nignored\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Parse([]byte(`
services:
  - name: ftp
    vip: 198.51.100.10:21
    helper: ftp
    on_down: reset
    sorry_server: 10.0.0.99:21
    notify: logger -t nfhelper "$NFHELPER_SERVER $NFHELPER_STATE"
    health_check:
      type: ftp
      credentials_file: ` + creds + `
    real_servers:
      - address: 10.0.0.11:21
      - address: 10.0.0.12:21
        health_check:
          type: tcp
          interval: 1s
          initial_state: down
      - address: 10.0.0.13:21
        health_check:
          type: http
          port: 80
          path: /health
          status: 204
          body: ok
          host: ftp.example.org
  - name: web
    vip: 198.51.100.10:443
    health_check: {type: https, interval: 100ms, timeout: 10ms, rise: 1, fall: 100}
    real_servers:
      - address: 10.0.0.11:443
  - name: dns
    vip: 198.51.100.10:53
    protocol: udp
    health_check: {type: tcp, port: 53}
    real_servers:
      - address: 10.0.0.11:53
      - address: 10.0.0.12:53
        health_check: {type: exec, command: "dig @$NFHELPER_SERVER_ADDRESS -p $NFHELPER_SERVER_PORT example.org"}
      - address: 10.0.0.13:53
        health_check: {type: none}
  - name: plain
    vip: "[2001:db8::10]:21"
    sorry_server: "[2001:db8::99]:21"
    real_servers:
      - address: "[2001:db8::11]:21"
`))
	if err != nil {
		t.Fatal(err)
	}
	ftp := c.Services[0]
	if ftp.SorryServerAddr != netip.MustParseAddrPort("10.0.0.99:21") || ftp.OnDown != "reset" {
		t.Errorf("ftp %+v", ftp)
	}
	if a, ok := c.Services[3].SorryAddr(); !ok || a != netip.MustParseAddrPort("[2001:db8::99]:21") {
		t.Errorf("sorry %v %v", a, ok)
	}
	if _, ok := c.Services[1].SorryAddr(); ok {
		t.Error("web has a sorry server")
	}
	ck := ftp.CheckFor(&ftp.RealServers[1])
	// The default timeout (3s) is capped by a shorter interval.
	if ck.Type != "tcp" || ck.Interval != time.Second || ck.Timeout != time.Second || ck.InitialUp || ck.Port != 21 {
		t.Errorf("tcp check %+v", ck)
	}
	if ck := ftp.CheckFor(&ftp.RealServers[0]); ck.Timeout != config.DefaultCheckTimeout || !ck.InitialUp || ck.CredentialsFile != creds {
		t.Errorf("ftp check %+v", ck)
	}
	// Another type takes none of the ftp keys of the service's block.
	if ck := ftp.CheckFor(&ftp.RealServers[2]); ck.Type != "http" || ck.CredentialsFile != "" || ck.Port != 80 || ck.Status != 204 || ck.Path != "/health" {
		t.Errorf("http check %+v", ck)
	}
	user, pass, err := config.ReadCredentials(creds)
	if err != nil || user != "check" || pass != "s3cr:et" {
		t.Errorf("credentials %q %q %v", user, pass, err)
	}
}

func TestCredentialsFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, text string
		mode       os.FileMode
		want       string // error text after the path; "" none
	}{
		{"ok", "u:p\n", 0o600, ""},
		{"read-only", "u:p", 0o400, ""},
		{"crlf", "u:p\r\n", 0o600, ""},
		{"empty password", "u:\n", 0o600, ""},
		{"group", "u:p\n", 0o640, " has mode 0640: others may read the password; want 0600 or stricter (chmod 600 "},
		{"world", "u:p\n", 0o604, " has mode 0604: others may read the password"},
		{"empty", "", 0o600, " is empty; want user:password on its first line"},
		{"no colon", "user\n", 0o600, ": its first line is not user:password"},
		{"no user", ":p\n", 0o600, ": its first line is not user:password"},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
		if err := os.WriteFile(p, []byte(tc.text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, tc.mode); err != nil {
			t.Fatal(err)
		}
		_, _, err := config.ReadCredentials(p)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), p+tc.want)):
			t.Errorf("%s: %v; want %q", tc.name, err, p+tc.want)
		}
		// The same reaches the configuration's error, at the key.
		_, err = config.Parse([]byte("services:\n  - name: a\n    vip: 198.51.100.10:21\n    health_check: {type: ftp, credentials_file: " + p +
			"}\n    real_servers:\n      - address: 10.0.0.11:21\n"))
		var list config.Errors
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: config: %v", tc.name, err)
		case tc.want != "" && (!errors.As(err, &list) || len(list) != 1 || list[0].Path != "services[0].health_check.credentials_file" ||
			!strings.Contains(list[0].Msg, tc.want)):
			t.Errorf("%s: config: %v", tc.name, err)
		}
	}
}
