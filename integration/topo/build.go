package topo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

// ModuleRoot is the directory of the nfhelper module's go.mod
// ($NFH_MODULE_ROOT when set: the VM harness sets it, as the guest's Go
// toolchain is slow to start).
func ModuleRoot() (string, error) {
	if d := os.Getenv("NFH_MODULE_ROOT"); d != "" {
		return d, nil
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the nfhelper module")
	}
	return filepath.Dir(gomod), nil
}

// GoBuild builds package pkg (a path relative to the module root, such as
// ./cmd/nfhelperd) into the file out. When $NFH_PREBUILT_DIR holds a program
// named like the package's last element (built beforehand, as the VM
// harness does), out becomes a symbolic link to it instead.
func GoBuild(ctx context.Context, out, pkg string) error {
	if d := os.Getenv("NFH_PREBUILT_DIR"); d != "" {
		if p := filepath.Join(d, filepath.Base(pkg)); isExec(p) {
			os.Remove(out)
			return os.Symlink(p, out)
		}
	}
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	c := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	c.Dir = root
	if b, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// DaemonBinary is bin made absolute or, when bin is empty, nfhelperd built
// from ./cmd/nfhelperd into dir.
func DaemonBinary(ctx context.Context, dir, bin string) (string, error) {
	if bin != "" {
		return filepath.Abs(bin)
	}
	out := filepath.Join(dir, "nfhelperd")
	return out, GoBuild(ctx, out, "./cmd/nfhelperd")
}

// ErrNotRoot: namespaces, nftables and NFQUEUE need root.
var ErrNotRoot = errors.New("needs root (network namespaces, nftables, NFQUEUE)")

// StartTool begins a program that builds a topology (the demo, the soak,
// the benchmark): it checks for root, makes a temporary directory, and
// returns a context a first Ctrl-C or SIGTERM cancels (so that deferred
// teardown runs; a second one kills the program, and the topology's reaper
// still removes the namespaces). done removes the directory.
func StartTool(kind string) (ctx context.Context, tmp string, done func(), err error) {
	if os.Geteuid() != 0 {
		return nil, "", nil, ErrNotRoot
	}
	if tmp, err = MkdirTemp(kind); err != nil {
		return nil, "", nil, err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx, tmp, func() { stop(); os.RemoveAll(tmp) }, nil
}

// CloseLogged removes a tool's topology from its deferred call, where the
// only place left for a teardown error is the tool's log.
func (t *Topo) CloseLogged(logf func(format string, args ...any)) {
	if err := t.Close(); err != nil {
		logf("teardown: %v", err)
	}
	logf("topology %s removed", t.ID)
}

// ExitCode is a tool's exit status for a StartTool error.
func ExitCode(err error) int {
	if errors.Is(err, ErrNotRoot) {
		return 2
	}
	return 1
}
