package topo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ModuleRoot is the directory of the nfhelper module's go.mod.
func ModuleRoot() (string, error) {
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
// ./cmd/nfhelperd) into the file out.
func GoBuild(ctx context.Context, out, pkg string) error {
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
