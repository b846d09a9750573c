package ctl

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"

	"github.com/nfhelper/nfhelper/kernel"
)

// KernelChecks reports what the kernel has (f), which datapath runs
// (running; empty when no daemon runs) and which one would be chosen
// (chosen, or why none: chooseErr).
func KernelChecks(f kernel.Features, running, chosen string, chooseErr error) []Check {
	var out []Check
	for _, ft := range f.List() {
		c := Check{Name: ft.Name}
		switch {
		case ft.Err == nil:
			c.Status, c.Detail = CheckOK, ft.Detail+": available"
		case errors.Is(ft.Err, kernel.ErrProbeSkipped):
			c.Status, c.Detail = CheckInfo, ft.Detail+": unknown: "+ft.Err.Error()
		case errors.Is(ft.Err, kernel.ErrNoKernelFTP):
			c.Status, c.Detail = CheckWarn, ft.Err.Error()+"; while the daemon is down, fail-open covers control connections only (new FTP sessions log in but cannot transfer)"
		case errors.Is(ft.Err, kernel.ErrNoKernelTFTP):
			c.Status, c.Detail = CheckWarn, ft.Err.Error()+"; while the daemon is down, new TFTP requests reach a server but its answers do not pass"
		case ft.Needed:
			// The compat datapath runs without it: worth knowing only.
			c.Status, c.Detail = CheckInfo, ft.Err.Error()+"; the kernel datapath needs it"
		default:
			c.Status, c.Detail = CheckInfo, ft.Err.Error()
		}
		out = append(out, c)
	}
	ready := "the kernel datapath can run"
	if err := f.KernelReady(); err != nil {
		ready = "the kernel datapath cannot run here"
	}
	switch {
	case chooseErr != nil:
		out = append(out, Check{Name: "datapath", Status: CheckFail, Detail: chooseErr.Error()})
	case running != "" && running != chosen:
		out = append(out, Check{Name: "datapath", Status: CheckInfo, Detail: fmt.Sprintf("running %s; a restart would choose %s (%s)", running, chosen, ready)})
	case running != "":
		out = append(out, Check{Name: "datapath", Status: CheckOK, Detail: fmt.Sprintf("running %s (%s)", running, ready)})
	default:
		out = append(out, Check{Name: "datapath", Status: CheckOK, Detail: fmt.Sprintf("would run %s (%s), queueing with %s", chosen, ready, kernel.QueueExprDetail(f.QueueExpr()))})
	}
	return out
}

// queueWithoutBypass reports whether e queues packets without the bypass
// flag: while no reader is bound (the daemon restarting), such a rule drops
// every packet it matches.
func queueWithoutBypass(e expr.Any) (num uint16, found bool) {
	switch q := e.(type) {
	case *expr.Queue:
		return q.Num, q.Flag&expr.QueueFlagBypass == 0
	case *expr.Target:
		if q.Name != "NFQUEUE" {
			return 0, false
		}
		info, ok := q.Info.(*xt.Unknown)
		if !ok || len(*info) < 2 {
			return 0, false
		}
		b := []byte(*info)
		num = binary.NativeEndian.Uint16(b)
		// Revisions 1 and later carry flags after the queue number and
		// count; bit 0 is bypass. Revision 0 has no bypass at all.
		if q.Rev == 0 || len(b) < 6 {
			return num, true
		}
		return num, binary.NativeEndian.Uint16(b[4:])&1 == 0
	}
	return 0, false
}

// queueMistakes finds queue rules without bypass in cr.
func queueMistakes(cr ChainRules) []Check {
	var out []Check
	for _, r := range cr.Rules {
		for _, e := range r.Exprs {
			if num, bad := queueWithoutBypass(e); bad {
				out = append(out, Check{Name: "ruleset", Status: CheckWarn, Detail: fmt.Sprintf(
					"table %s chain %s: a rule queues to %d without bypass: while no program reads that queue, its packets are dropped (add `bypass`)",
					tableName(cr.Chain.Table), cr.Chain.Name, num)})
			}
		}
	}
	return out
}

// chainsToCheck says which chains' rules the ruleset checks read: base
// chains of ip, ip6 and inet tables.
func chainsToCheck(c *nftables.Chain) bool {
	switch c.Table.Family {
	case nftables.TableFamilyIPv4, nftables.TableFamilyIPv6, nftables.TableFamilyINet:
		return c.Hooknum != nil
	}
	return false
}

// LiveRulesetMistakes reads the ruleset's base chains, but for those of
// table inet own, and reports RulesetMistakes.
func LiveRulesetMistakes(conn *nftables.Conn, own string) ([]Check, error) {
	chains, err := conn.ListChains()
	if err != nil {
		return nil, fmt.Errorf("listing chains: %w", err)
	}
	var cr []ChainRules
	var errs []error
	for _, c := range chains {
		if c.Table.Name == own && c.Table.Family == nftables.TableFamilyINet || !chainsToCheck(c) {
			continue
		}
		rules, err := conn.GetRules(c.Table, c)
		if err != nil {
			errs = append(errs, fmt.Errorf("listing chain %s %s: %w", tableName(c.Table), c.Name, err))
			continue
		}
		cr = append(cr, ChainRules{Chain: c, Rules: rules})
	}
	return RulesetMistakes(cr), errors.Join(errs...)
}
