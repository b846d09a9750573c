package kernel

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// natFTPLoaded by what sysfs shows: nf_conntrack_ftp built in (no
// initstate), a module with nf_nat_ftp, a module without it.
func TestNatFTPLoaded(t *testing.T) {
	mk := func(t *testing.T, files ...string) string {
		dir := t.TempDir()
		for _, f := range files {
			p := filepath.Join(dir, f)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("live\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	if err := natFTPLoaded(mk(t, "nf_conntrack_ftp/parameters/ports")); err != nil {
		t.Errorf("built in: %v", err)
	}
	if err := natFTPLoaded(mk(t, "nf_conntrack_ftp/initstate", "nf_nat_ftp/initstate")); err != nil {
		t.Errorf("both modules loaded: %v", err)
	}
	err := natFTPLoaded(mk(t, "nf_conntrack_ftp/initstate"))
	if !errors.Is(err, ErrNoKernelFTP) {
		t.Errorf("nf_nat_ftp missing: %v", err)
	}
	t.Log(err)
}

// The same for nf_nat_tftp.
func TestNatTFTPLoaded(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "nf_conntrack_tftp"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nf_conntrack_tftp", "initstate"), []byte("live\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := natHelperLoaded(dir, "nf_conntrack_tftp", "nf_nat_tftp", ErrNoKernelTFTP)
	if !errors.Is(err, ErrNoKernelTFTP) || !strings.Contains(err.Error(), "modprobe nf_nat_tftp") {
		t.Errorf("nf_nat_tftp missing: %v", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "nf_nat_tftp"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := natHelperLoaded(dir, "nf_conntrack_tftp", "nf_nat_tftp", ErrNoKernelTFTP); err != nil {
		t.Errorf("both modules loaded: %v", err)
	}
}
