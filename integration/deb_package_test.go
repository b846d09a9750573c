//go:build integration

package integration

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/integration/topo"
	"github.com/nfhelper/nfhelper/kernel"
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

	// The suite's add-on helpers (addonConfig): the test forwards the WAN
	// addresses' port 21 as a user would.
	addon := addonConfig
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
			started := time.Now()
			d, err := tp.StartDaemon(bin, path)
			if err != nil {
				t.Fatalf("the package's nfhelperd did not start: %v", err)
			}
			t.Logf("ready after %v", time.Since(started).Round(time.Millisecond))
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
	r := runFtpget(t, ns, addr, mode, "small.bin", 1)
	if got, want := r.results[0].SHA256, harness.tp.Files["small.bin"]; got != want {
		t.Errorf("%s %s: small.bin sha256 %s, want %s", addr, mode, got, want)
	}
	t.Logf("%s %s: small.bin in %v", addr, mode, time.Since(start).Round(time.Millisecond))
}

// TestXtQueueAutoload: where the xtables NFQUEUE target must be used (no
// native queue expression), kernel.ProbeXtQueue makes it usable in an inet
// table whatever was loaded before. With NFH_FRESH_BOOT=1 (make vmdeb runs it
// after TestDebianPackage in a fresh boot of Debian's kernel, where the
// package's daemon queued natively and so left xt_NFQUEUE unloaded) the
// kernel must first refuse the target in an inet table, the failure the
// daemon's start met before: its autoload asks for "(null)t_NFQUEUE".
func TestXtQueueAutoload(t *testing.T) {
	tp := needTopo(t)
	fresh := os.Getenv("NFH_FRESH_BOOT") == "1"
	addInet := func() (err error) {
		err = topo.Do(tp.Router, func() error {
			conn, err := nftables.New()
			if err != nil {
				return err
			}
			tb := conn.AddTable(&nftables.Table{Name: "nfht_xtqueue", Family: nftables.TableFamilyINet})
			c := conn.AddChain(&nftables.Chain{Name: "c", Table: tb})
			conn.AddRule(&nftables.Rule{Table: tb, Chain: c, Exprs: []expr.Any{kernel.XtQueue(65535, 1)}})
			conn.DelTable(tb)
			return conn.Flush()
		})
		return err
	}
	err := addInet()
	t.Logf("xt NFQUEUE in an inet table before the probe: %v", err)
	if fresh {
		if _, serr := os.Stat("/sys/module/xt_NFQUEUE"); serr == nil {
			t.Fatal("xt_NFQUEUE is loaded in what should be a fresh boot")
		}
		if err == nil || !errors.Is(err, unix.ENOENT) && !strings.Contains(err.Error(), "no such file") {
			t.Errorf("inet table with the xt target on a fresh kernel: %v, want ENOENT", err)
		}
	}
	if err := topo.Do(tp.Router, func() error {
		conn, err := nftables.New()
		if err != nil {
			return err
		}
		return kernel.ProbeXtQueue(conn)
	}); err != nil {
		t.Fatalf("ProbeXtQueue: %v", err)
	}
	if err := addInet(); err != nil {
		t.Errorf("xt NFQUEUE in an inet table after the probe: %v", err)
	}
	if fresh {
		if _, err := os.Stat("/sys/module/xt_NFQUEUE"); err != nil {
			t.Errorf("the probe did not load xt_NFQUEUE: %v", err)
		}
	}
	out, _, err := execIn(t, 10*time.Second, tp.Router, nil, "nft", "list", "tables")
	if err != nil || strings.Contains(string(out), "nfht_xtqueue") || strings.Contains(string(out), kernel.ProbeTable) {
		t.Errorf("tables left: %s %v", out, err)
	}
}
