package daemon

import "github.com/nfhelper/nfhelper/config"

// vrrpFile is where keepalived's notify script writes the router's VRRP
// role, as config.Config.VRRPStateFile tells it.
type vrrpFile struct {
	path       string
	configured bool
}

func (d *Daemon) setVRRPFile(cfg *config.Config) {
	path, configured := cfg.VRRPStateFile()
	d.vrrpFile.Store(&vrrpFile{path, configured})
}

// vrrpStateFile is the VRRP state file of the configuration in force, for
// the control socket's status and the metrics, which read it when asked.
func (d *Daemon) vrrpStateFile() (path string, configured bool) {
	f := d.vrrpFile.Load()
	return f.path, f.configured
}
