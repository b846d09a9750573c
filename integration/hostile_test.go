//go:build integration

package integration

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/ftpclient"
	"github.com/nfhelper/nfhelper/integration/topo"
)

// TestHostileCommands: a control connection that carries what no client
// should send: bytes outside ASCII and NULs in announcements (refused, and
// the server never sees them as PORT or EPRT), a line far longer than any
// command, a burst of PASV to use up passive ports (200 227 replies in
// flight: every one rewritten, the sender held back while too many
// rewrites are unacknowledged), and thousands of commands in one write
// (segments at the full MSS, GSO-sized before the kernel cuts them). None
// of it opens a channel it should not, the connection goes on, and a
// transfer on it afterwards is byte-exact.
func TestHostileCommands(t *testing.T) {
	needDaemon(t)
	t.Cleanup(func() {
		if t.Failed() {
			_, out, _ := nfhelperctl(t, harness.tp.ControlSocket(), "status")
			t.Logf("nfhelperctl status:\n%s", out)
		}
	})
	vip := net.JoinHostPort(topo.VIP4, "21")
	f := dialRaw(t, vip)
	f.login("anonymous")
	const mapName = "active4"
	before := len(findElem(t, mapName, []string{"*", topo.ClientV4, "*"}, nil))

	t.Run("non-ascii", func(t *testing.T) {
		// To quirkyftpd, which accepts any PORT: its service blocks
		// refused announcements, so none may be accepted.
		if harness.noQuirky != "" {
			t.Skip(harness.noQuirky)
		}
		f := dialRaw(t, net.JoinHostPort(topo.VIP4, "2321"))
		f.login("anonymous")
		for _, line := range []string{
			"PORT 203,0,113,2,\xc3\xa9,1",
			"PORT 203,0,113,2,19\x00,1",
			"EPRT |1|203.0.113.2|\xff\xfe|",
			"EPRT \xe2\x80\x96|1|203.0.113.2|50001|",
			"NOOP \x00\xff\xfe\x80",
		} {
			if code, _ := f.cmd(line, 0); code/100 == 2 && !strings.HasPrefix(line, "NOOP") {
				t.Errorf("%q accepted (%d)", line, code)
			}
		}
		if n := len(findElem(t, mapName, []string{"*", topo.ClientV4, "*"}, nil)); n != before {
			t.Errorf("%d active channels for the client after malformed announcements, want %d", n, before)
		}
	})
	t.Run("long-line", func(t *testing.T) {
		// Far past what the helper carries between segments: it must skip
		// the line and read the next one afresh.
		f.cmd("NOOP "+strings.Repeat("A", 3000), 0)
		_, msg := f.cmd("PASV", 2)
		target := pasvTarget(t, msg)
		f.retrPassive(target)
	})
	t.Run("pasv-flood", func(t *testing.T) {
		const n = 200
		passiveKey := []string{topo.ClientV4, topo.VIP4, "*"}
		earlier := len(findElem(t, "passive4", passiveKey, nil)) // other tests' connections
		f.send(strings.Repeat("PASV\r\n", n))
		var last string
		bad := 0
		for i := range n {
			_, msg := f.expect(2)
			if !strings.Contains(msg, "198,51,100,10") {
				if bad == 0 {
					t.Errorf("227 number %d of the flood not rewritten: %q", i, msg)
				}
				bad++
			}
			last = msg
		}
		if bad > 0 {
			t.Fatalf("%d of %d 227 replies not rewritten", bad, n)
		}
		target := pasvTarget(t, last)
		// Evicted channels are deleted right after the verdicts that
		// replaced them: poll until only the newest is left.
		added := 0
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if added = len(findElem(t, "passive4", passiveKey, nil)) - earlier; added <= 1 {
				break
			}
		}
		if added > 1 {
			t.Errorf("%d passive channels added by %d PASV, want the newest only (max_data_channels 1)", added, n)
		}
		_, port, _ := net.SplitHostPort(target)
		if len(findElem(t, "passive4", []string{topo.ClientV4, topo.VIP4, port}, nil)) != 1 {
			t.Errorf("the channel of the last 227 (%s) is not in the kernel", target)
		}
		f.retrPassive(target)
	})
	t.Run("one-big-write", func(t *testing.T) {
		const n = 3000
		f.send(strings.Repeat("NOOP\r\n", n))
		for range n {
			f.expect(2)
		}
		_, msg := f.cmd("PASV", 2)
		f.retrPassive(pasvTarget(t, msg))
	})
	f.cmd("QUIT", 2)
}

// pasvTarget is the data address a 227 reply announces; it must be the VIP.
func pasvTarget(t *testing.T, msg string) string {
	t.Helper()
	ap, err := ftpclient.ParsePASV(msg)
	if err != nil {
		t.Fatalf("227 %q: %v", msg, err)
	}
	if ap.Addr().String() != topo.VIP4 {
		t.Fatalf("227 announces %s, not the VIP", ap)
	}
	return ap.String()
}
