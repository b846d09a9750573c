// Package deptest keeps the engine pure: its packages' tests fail when one
// of them comes to depend on the kernel's interfaces (netlink, nftables,
// conntrack, golang.org/x/sys), on the queue's I/O, or on the daemon's own
// packages that use them. The engine is then testable and reusable without
// a kernel, and the daemon alone talks to the system.
package deptest

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/nfhelper/nfhelper"

// forbidden are import paths that, with everything under them, a pure
// package may not depend on.
var forbidden = []string{
	"github.com/mdlayher",
	"github.com/google/nftables",
	"github.com/ti-mo",
	"golang.org/x/sys",
	module + "/kernel",
	module + "/nft",
	module + "/ctl",
	module + "/metrics",
	module + "/daemon",
	module + "/cmd",
}

// queueIO is the queue's I/O package; its pure subpackages (nfq/packet,
// nfq/seqnum) are allowed.
const queueIO = module + "/nfq"

// Forbidden reports whether a pure package may not depend on the package
// with import path dep.
func Forbidden(dep string) bool {
	if dep == queueIO {
		return true
	}
	for _, f := range forbidden {
		if dep == f || strings.HasPrefix(dep, f+"/") {
			return true
		}
	}
	return false
}

// Pure fails t if the package with import path pkg depends, directly or
// through others, on a forbidden package (its tests' imports aside).
func Pure(t *testing.T, pkg string) {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if Forbidden(dep) {
			t.Errorf("%s depends on %s", pkg, dep)
		}
	}
}
