package vrrp_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/nfhelper/nfhelper/internal/deptest"
)

const pkg = "github.com/nfhelper/nfhelper/vrrp"

// The package stays pure, and more: the standard library only.
func TestDeps(t *testing.T) {
	deptest.Pure(t, pkg)
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if dep != pkg {
			t.Errorf("%s depends on %s, not in the standard library", pkg, dep)
		}
	}
}
