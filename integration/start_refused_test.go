//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStartRefused: a daemon that cannot run (a bad configuration, a
// datapath the kernel lacks features for) says why at once and leaves
// nothing in the kernel: no table, no bound queue. It runs in a namespace
// of its own, where nothing else is.
func TestStartRefused(t *testing.T) {
	needDaemon(t) // the binary
	ns := fmt.Sprintf("nfht-%d-refused", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v %s", ns, err, out)
		}
	})
	dir := t.TempDir()
	for _, c := range []struct {
		name, config string
		env          []string
		want         []string
	}{
		{"unknown key", "services:\n  - name: ftp\n    vip: 198.51.100.10:21\n    schedular: rr\n    real_servers:\n      - address: 10.0.0.11:21\n",
			nil, []string{":4:5: services[0].schedular: unknown key (did you mean scheduler?)"}},
		{"bad address", "services:\n  - name: ftp\n    vip: 198.51.100.10\n    real_servers:\n      - address: 10.0.0.11:21\n",
			nil, []string{":3:10: services[0].vip"}},
		{"not YAML", "services: [\n", nil, []string{"YAML"}},
		{"missing kernel features", "services:\n  - name: ftp\n    vip: 198.51.100.10:21\n    helper: ftp\n    real_servers:\n      - address: 10.0.0.11:21\n",
			[]string{"NFHELPER_DATAPATH=kernel"}, []string{"NFHELPER_DATAPATH=kernel: datapath unavailable on this kernel: "}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.env != nil && kernelDatapathAvailable(t) {
				t.Skip("this kernel has what the kernel datapath needs: nothing missing to refuse")
			}
			path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".yaml")
			if err := os.WriteFile(path, []byte(c.config), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, harness.daemonBin, "--config", path)
			cmd.Env = append(append(os.Environ(), "NFHELPER_SOCKET="+filepath.Join(dir, "refused.sock")), c.env...)
			out, err := cmd.CombinedOutput()
			if ctx.Err() != nil {
				t.Fatalf("no quick failure:\n%s", out)
			}
			if code := cmd.ProcessState.ExitCode(); err == nil || code != 1 {
				t.Errorf("exit code %d (%v), want 1", code, err)
			}
			for _, w := range c.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(string(out), "msg=ready") {
				t.Errorf("got ready:\n%s", out)
			}
			tables, _ := exec.Command("ip", "netns", "exec", ns, "nft", "list", "tables").CombinedOutput()
			if strings.TrimSpace(string(tables)) != "" {
				t.Errorf("tables left behind:\n%s", tables)
			}
			queues, _ := exec.Command("ip", "netns", "exec", ns, "cat", "/proc/net/netfilter/nfnetlink_queue").CombinedOutput()
			if strings.TrimSpace(string(queues)) != "" {
				t.Errorf("queues left bound:\n%s", queues)
			}
		})
	}
}

// kernelDatapathAvailable asks the daemon whether the kernel datapath could
// run here.
func kernelDatapathAvailable(t *testing.T) bool {
	out, _ := harness.tp.Exec(harness.tp.Router, harness.daemonBin, "--check", "--config", harness.config).CombinedOutput()
	return !strings.Contains(string(out), "the kernel datapath cannot run here")
}

// TestCheckChoosesDatapath: probing picks the kernel datapath where the
// kernel has every part of it (Debian's stock kernel, in the VM) and the
// configuration has no add-on helpers, the compat datapath otherwise;
// `nfhelperd --check` says which, without NFHELPER_DATAPATH.
func TestCheckChoosesDatapath(t *testing.T) {
	needDaemon(t) // the binary
	tp := harness.tp
	kernelOK := kernelDatapathAvailable(t)
	t.Logf("the kernel datapath can run here: %v", kernelOK)
	dir := t.TempDir()
	for _, c := range []struct {
		name, config string
		kernel       bool
	}{
		{"services", testConfig + metricsConfig, kernelOK},
		{"with-add-ons", testConfig + addonConfig + metricsConfig, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, c.name+".yaml")
			if err := os.WriteFile(path, []byte(c.config), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := tp.Exec(tp.Router, harness.daemonBin, "--check", "--config", path)
			for _, kv := range os.Environ() {
				if !strings.HasPrefix(kv, "NFHELPER_DATAPATH=") {
					cmd.Env = append(cmd.Env, kv)
				}
			}
			out, _ := cmd.CombinedOutput()
			want := "would run xt-nfqueue+nft-maps"
			if c.kernel {
				want = "would run kernel"
			}
			if !strings.Contains(string(out), want) {
				t.Errorf("--check does not say %q:\n%s", want, out)
			}
		})
	}
}
