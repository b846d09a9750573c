//go:build integration

package integration

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// TestDebianPackage: the installed Debian package's nfhelperd starts with
// each configuration shape the docs show (balancer only, add-on helpers
// only, both), its table carries FTP sessions (bytes checked by hash) and it
// stops cleanly, on a kernel where nothing was loaded for it before. On
// Debian's stock kernel that is a fresh boot of the VM (`make vmdeb`, part
// of `make vmtest`): every netfilter module must come through the kernel's
// own autoloading or the daemon's probes, as on a freshly booted router.
// NFH_DEB names the .deb (`make deb`); without it the test skips.
func TestDebianPackage(t *testing.T) {
	deb := os.Getenv("NFH_DEB")
	if deb == "" {
		t.Skip("NFH_DEB names no package (make vmdeb builds one and runs this test in a fresh VM boot)")
	}
	tp := needTopo(t)
	if os.Getenv("NFHVM") != "" {
		// A module loaded before would hide what a fresh router lacks.
		for _, m := range []string{"nft_queue", "xt_NFQUEUE", "nfnetlink_queue", "nf_conntrack_ftp"} {
			if _, err := os.Stat("/sys/module/" + m); err == nil {
				t.Fatalf("module %s is loaded before the first start: run this test alone in a fresh boot (make vmdeb)", m)
			}
		}
	}
	root := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-x", deb, root).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x %s: %v\n%s", deb, err, out)
	}
	bin := filepath.Join(root, "usr", "sbin", "nfhelperd")
	// Probing chooses, as for a user.
	t.Setenv("NFHELPER_DATAPATH", "")

	const addon = `helpers:
  - name: router-ftp
    helper: ftp
    match:
      destination: 198.51.100.20:21
  - name: router-ftp6
    helper: ftp
    match:
      destination: "[2001:db8:1::20]:21"
`
	balanced := func(t *testing.T) {
		for _, addr := range []string{net.JoinHostPort(topo.VIP4, "21"), net.JoinHostPort(topo.VIP6, "21")} {
			checkSession(t, tp.Client, addr, "epsv")
		}
		checkSession(t, tp.Client, net.JoinHostPort(topo.VIP4, "21"), "pasv")
	}
	forwarded := func(t *testing.T) {
		installUserRules(t, userRules{})
		for _, addr := range []string{net.JoinHostPort(topo.WAN4, "21"), net.JoinHostPort(topo.WAN6, "21")} {
			checkSession(t, tp.Client, addr, "epsv")
		}
		checkSession(t, tp.Client, net.JoinHostPort(topo.WAN4, "21"), "pasv")
	}
	for _, shape := range []struct {
		name, config string
		checks       []func(*testing.T)
	}{
		{"balancer", topo.ReferenceConfig, []func(*testing.T){balanced}},
		{"add-on", addon, []func(*testing.T){forwarded}},
		{"both", topo.ReferenceConfig + addon, []func(*testing.T){balanced, forwarded}},
	} {
		t.Run(shape.name, func(t *testing.T) {
			path := filepath.Join(root, shape.name+".yaml")
			if err := os.WriteFile(path, []byte(shape.config), 0o644); err != nil {
				t.Fatal(err)
			}
			d, err := tp.StartDaemon(bin, path)
			if err != nil {
				t.Fatalf("the package's nfhelperd did not start: %v", err)
			}
			stopped := false
			defer func() {
				if !stopped {
					_, _ = d.Stop()
				}
				if t.Failed() {
					t.Logf("nfhelperd log:\n%s", tailString(d.Log(), 6000))
				}
			}()
			ready := readyLine(d.Log())
			t.Logf("ready: %s", ready)
			if os.Getenv("NFHVM") != "" && !strings.Contains(ready, "queue_expr=nft") {
				// Debian's kernel has the native queue expression: the
				// xtables target cannot be autoloaded from an inet table.
				t.Errorf("not queueing with the native nft queue expression on Debian's kernel: %s", ready)
			}
			for _, check := range shape.checks {
				check(t)
			}
			res, err := d.Stop()
			stopped = true
			if err != nil || res.ExitCode != 0 || !res.TableGone {
				t.Errorf("stop: %+v %v", res, err)
			}
		})
	}
}

var readyLineRE = regexp.MustCompile(`(?m)^.*msg=ready.*$`)

func readyLine(log string) string { return readyLineRE.FindString(log) }

// checkSession fetches big.bin over one control connection to addr in mode
// and checks its hash.
func checkSession(t *testing.T, ns, addr, mode string) {
	t.Helper()
	start := time.Now()
	r := runFtpget(t, ns, addr, mode, "big.bin", 1)
	if got, want := r.results[0].SHA256, harness.tp.Files["big.bin"]; got != want {
		t.Errorf("%s %s: big.bin sha256 %s, want %s", addr, mode, got, want)
	}
	t.Logf("%s %s: big.bin in %v", addr, mode, time.Since(start).Round(time.Millisecond))
}
