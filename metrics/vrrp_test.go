package metrics

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestVRRPMaster: nfhelper_vrrp_master is read from the state file at
// each scrape: 1 for MASTER, 0 for any other state or a file that tells
// nothing; absent without a file nobody configured.
func TestVRRPMaster(t *testing.T) {
	f := newFixture(t)
	path := filepath.Join(t.TempDir(), "vrrp-state")
	configured := false
	f.m.VRRPStateFile = func() (string, bool) { return path, configured }
	master := func() (float64, bool) {
		s, _ := scrape(t, f.m.Handler())
		v, ok := s["nfhelper_vrrp_master"]
		return v, ok
	}
	if v, ok := master(); ok {
		t.Errorf("no file, no key: %v", v)
	}
	configured = true
	if v, ok := master(); !ok || v != 0 {
		t.Errorf("no file, key set: %v, %v", v, ok)
	}
	now := strconv.FormatInt(time.Now().Unix(), 10)
	for _, c := range []struct {
		content string
		want    float64
	}{
		{"MASTER G " + now + "\n", 1},
		{"BACKUP G " + now + "\n", 0},
		{"FAULT G " + now + "\n", 0},
		{"MASTER G\n", 0},            // bad
		{"MASTER G 1000000000\n", 0}, // written before this boot
	} {
		if err := os.WriteFile(path, []byte(c.content), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, configured = range []bool{false, true} {
			if v, ok := master(); !ok || v != c.want {
				t.Errorf("%q (configured %v): %v, %v; want %v", c.content, configured, v, ok, c.want)
			}
		}
	}
	f.m.VRRPStateFile = nil
	if v, ok := master(); ok {
		t.Errorf("no VRRPStateFile: %v", v)
	}
}
