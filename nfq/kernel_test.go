package nfq

import (
	"os"
	"path/filepath"
	"testing"
)

func TestKernelStats(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nfnetlink_queue")
	os.WriteFile(path, []byte("  100  12345     5 2 65535     7     3       42  1\n  101  12346     0 2 65535     0     0        9  1\nbad line\n"), 0o644)
	got := KernelStats(path)
	want := []KernelQueue{{100, 5, 7, 3}, {101, 0, 0, 0}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if KernelStats(filepath.Join(t.TempDir(), "missing")) != nil {
		t.Error("a missing file gave counters")
	}
}
