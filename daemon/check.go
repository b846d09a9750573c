package daemon

import (
	"fmt"
	"io"
	"os"

	"github.com/google/nftables"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/kernel"
	"github.com/nfhelper/nfhelper/nft"
)

// chooser picks the datapath for a configuration: the kernel one where
// the kernel has every part of it and the configuration no add-on helpers
// (behind the user's SNAT their channels need the compat datapath's maps).
func chooser(cfg *config.Config) func(kernel.Features) (string, error) {
	auto := len(cfg.Helpers) == 0
	return func(f kernel.Features) (string, error) {
		dp, err := kernel.Choose(f, os.Getenv(kernel.EnvDatapath), auto)
		if err == nil && dp == kernel.DatapathKernel && !auto {
			return "", fmt.Errorf("%s=kernel: %w", kernel.EnvDatapath, errAddonsKernel)
		}
		return dp, err
	}
}

// Check is --check: the kernel's features, the datapath a start with cfg
// would choose and the ruleset's visible mistakes, printed to w; 1 if a
// check failed. It changes nothing that outlives it (see kernel.Probe).
func Check(w io.Writer, cfg *config.Config) int {
	conn, err := nftables.New()
	if err != nil {
		fmt.Fprintln(w, "FAIL  nftables", err)
		return 1
	}
	f := kernel.Probe(conn)
	chosen, err := chooser(cfg)(f)
	r := &ctl.CheckReport{Checks: ctl.KernelChecks(f, "", chosen, err)}
	mistakes, err := ctl.LiveRulesetMistakes(conn, tableName)
	if err != nil {
		r.Checks = append(r.Checks, ctl.Check{Name: "ruleset", Status: ctl.CheckInfo, Detail: err.Error()})
	}
	r.Checks = append(r.Checks, mistakes...)
	if len(mistakes) == 0 && err == nil {
		r.Checks = append(r.Checks, ctl.Check{Name: "ruleset", Status: ctl.CheckOK, Detail: "no mistakes found"})
	}
	r.Checks = append(r.Checks, ctl.ConfigChecks(ecmpCheck, cfg.ECMPWarnings())...)
	ctl.WriteCheck(w, r)
	if r.Failed() {
		return 1
	}
	return 0
}

// queueExprName is how spec's rules queue: kernel.QueueNative or
// kernel.QueueXt.
func queueExprName(spec *nft.Spec) string {
	if spec.NativeQueue {
		return kernel.QueueNative
	}
	return kernel.QueueXt
}

// ecmpCheck names the configuration's ECMP warnings.
const ecmpCheck = "ecmp"

// configChecks are the running configuration's warnings, for nfhelperctl
// check.
func (d *Daemon) configChecks() []ctl.Check {
	d.mu.Lock()
	cfg := d.running
	d.mu.Unlock()
	return ctl.ConfigChecks(ecmpCheck, cfg.ECMPWarnings())
}
