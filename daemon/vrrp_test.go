package daemon

import (
	"testing"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/vrrp"
)

// A reload's vrrp_state_file reaches status and the metrics.
func TestVRRPStateFile(t *testing.T) {
	d := &Daemon{}
	d.setVRRPFile(&config.Config{})
	if path, configured := d.vrrpStateFile(); path != vrrp.DefaultStateFile || configured {
		t.Errorf("default: %q, %v", path, configured)
	}
	d.setVRRPFile(&config.Config{VRRPFile: "/var/lib/ha/role"})
	if path, configured := d.vrrpStateFile(); path != "/var/lib/ha/role" || !configured {
		t.Errorf("reloaded: %q, %v", path, configured)
	}
}
