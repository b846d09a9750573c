package ctl

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
)

// ProbeInput is what Probe needs to know about the running daemon.
type ProbeInput struct {
	Table        string // the daemon's table, family inet
	Datapath     string
	Queues       Queues
	QueueExpr    string // kernel.QueueNative or kernel.QueueXt
	Packets      uint64 // packets the workers read so far
	Services     []ipvs.ServiceView
	ConntrackErr error // the daemon's conntrack listener failed
	// Choose picks the datapath for the features found; nil: no datapath
	// line.
	Choose func(kernel.Features) (string, error)
	// Config are the running configuration's own warnings (ConfigChecks).
	Config []Check
}

// conntrackPriority is NF_IP_PRI_CONNTRACK: chains before it see packets
// without a conntrack entry.
const conntrackPriority = -200

// Probe checks, in the calling process's network namespace, the kernel
// features the datapath uses and the ruleset mistakes it can see. It
// changes nothing but what the one probe batch adds and deletes at once.
func Probe(ctx context.Context, in ProbeInput) []Check {
	conn, err := nftables.New()
	if err != nil {
		return []Check{newCheck("nftables", CheckFail, "netlink: %v", err)}
	}
	tables, err := conn.ListTables()
	if err != nil {
		return []Check{newCheck("nftables", CheckFail, "listing tables: %v", err)}
	}
	chains, chainsErr := conn.ListChains()
	out := []Check{ownTableCheck(in.Table, tables, chains), queueCheck(in)}
	out = append(out, datapathChecks(kernel.Probe(conn), in.Datapath, in.Choose)...)
	out = append(out, conntrackChecks(in.ConntrackErr, probeConntrackEvents, readSysctl)...)
	out = append(out, forwardingChecks(in.Services, readSysctl)...)
	out = append(out, in.Config...)
	// A failed chain listing is reported last, by the ruleset check; the
	// table check then counts no chains.
	return append(out, otherTablesChecks(in.Table, chains, chainsErr, conn.GetRules)...)
}

// ConfigChecks are a configuration's warnings as checks named name.
func ConfigChecks(name string, warnings []string) []Check {
	var out []Check
	for _, w := range warnings {
		out = append(out, Check{Name: name, Status: CheckWarn, Detail: w})
	}
	return out
}

func newCheck(name, status, format string, args ...any) Check {
	return Check{Name: name, Status: status, Detail: fmt.Sprintf(format, args...)}
}

// ownTableCheck: our table and its chains.
func ownTableCheck(table string, tables []*nftables.Table, chains []*nftables.Chain) Check {
	var own *nftables.Table
	for _, t := range tables {
		if t.Name == table && t.Family == nftables.TableFamilyINet {
			own = t
		}
	}
	if own == nil {
		return newCheck("table", CheckFail, "table inet %s is missing: someone deleted it; restart nfhelperd", table)
	}
	n := 0
	for _, c := range chains {
		if c.Table.Name == own.Name && c.Table.Family == own.Family {
			n++
		}
	}
	return newCheck("table", CheckOK, "table inet %s installed (%d chains)", table, n)
}

// queueCheck: the queue statement the running datapath's rules use.
func queueCheck(in ProbeInput) Check {
	last := int(in.Queues.First) + int(in.Queues.Count) - 1
	seen := "no packet queued yet"
	if in.Packets > 0 {
		seen = fmt.Sprintf("%d packets read", in.Packets)
	}
	return newCheck("queue", CheckOK, "%s in use by datapath %s, queues %d-%d bound (%s)", kernel.QueueExprDetail(in.QueueExpr), in.Datapath, in.Queues.First, last, seen)
}

// datapathChecks: what the kernel has (features), and which datapath it
// would get; without choose, the running one.
func datapathChecks(features kernel.Features, running string, choose func(kernel.Features) (string, error)) []Check {
	if choose == nil {
		return KernelChecks(features, running, running, nil)
	}
	chosen, err := choose(features)
	return KernelChecks(features, running, chosen, err)
}

// conntrackChecks: conntrack events, which end connections (and give
// states, for lc/wlc/sed/nq), and accounting, which counts packets and
// bytes. listenerErr is the daemon's listener's failure; probeEvents is
// tried only without one.
func conntrackChecks(listenerErr error, probeEvents func() error, sysctl func(string) (string, error)) []Check {
	var out []Check
	switch {
	case listenerErr != nil:
		out = append(out, newCheck("conntrack-events", CheckFail, "the daemon's listener failed: %v; connections end only by their timeouts", listenerErr))
	default:
		if err := probeEvents(); err != nil {
			out = append(out, newCheck("conntrack-events", CheckFail, "%v; connections end only by their timeouts", err))
		} else {
			out = append(out, newCheck("conntrack-events", CheckOK, "conntrack destroy and update events available"))
		}
	}
	switch v, err := sysctl("net/netfilter/nf_conntrack_acct"); {
	case err != nil:
		out = append(out, newCheck("conntrack-acct", CheckInfo, "unknown: %v", err))
	case v == "0":
		out = append(out, newCheck("conntrack-acct", CheckWarn, "net.netfilter.nf_conntrack_acct=0: real servers' packet and byte counters stay 0"))
	default:
		out = append(out, newCheck("conntrack-acct", CheckOK, "net.netfilter.nf_conntrack_acct=%s: real servers count packets and bytes", v))
	}
	return out
}

// forwardingChecks: forwarding, for the families the services use.
func forwardingChecks(services []ipvs.ServiceView, sysctl func(string) (string, error)) []Check {
	var v4, v6 bool
	for _, s := range services {
		if s.VIP.Addr().Unmap().Is4() {
			v4 = true
		} else {
			v6 = true
		}
	}
	var out []Check
	for _, f := range []struct {
		need         bool
		sysctl, name string
	}{{v4, "net/ipv4/ip_forward", "net.ipv4.ip_forward"}, {v6, "net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding"}} {
		if !f.need {
			continue
		}
		switch v, err := sysctl(f.sysctl); {
		case err != nil:
			out = append(out, newCheck("forwarding", CheckInfo, "%s unknown: %v", f.name, err))
		case v == "0":
			out = append(out, newCheck("forwarding", CheckFail, "%s=0: connections to real servers are not routed", f.name))
		default:
			out = append(out, newCheck("forwarding", CheckOK, "%s=%s", f.name, v))
		}
	}
	return out
}

// otherTablesChecks: other tables' mistakes, in chains (listing them
// failed: chainsErr) but for those of table inet own. A chain whose rules
// getRules cannot list is reported and skipped.
func otherTablesChecks(own string, chains []*nftables.Chain, chainsErr error,
	getRules func(*nftables.Table, *nftables.Chain) ([]*nftables.Rule, error)) []Check {
	if chainsErr != nil {
		return []Check{newCheck("ruleset", CheckInfo, "listing chains: %v", chainsErr)}
	}
	var out []Check
	var cr []ChainRules
	others := map[string]bool{}
	for _, c := range chains {
		if c.Table.Name == own && c.Table.Family == nftables.TableFamilyINet {
			continue
		}
		others[tableName(c.Table)] = true
		if !chainsToCheck(c) {
			continue
		}
		rules, err := getRules(c.Table, c)
		if err != nil {
			out = append(out, newCheck("ruleset", CheckInfo, "listing chain %s %s: %v", tableName(c.Table), c.Name, err))
			continue
		}
		cr = append(cr, ChainRules{Chain: c, Rules: rules})
	}
	found := RulesetMistakes(cr)
	out = append(out, found...)
	if len(found) == 0 {
		out = append(out, newCheck("ruleset", CheckOK, "no mistakes found in %d other tables", len(others)))
	}
	return out
}

// probeConntrackEvents subscribes to conntrack's destroy events and leaves.
func probeConntrackEvents() error {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return fmt.Errorf("conntrack netlink: %w", err)
	}
	defer c.Close()
	for _, g := range []netfilter.NetlinkGroup{netfilter.GroupCTDestroy, netfilter.GroupCTUpdate} {
		if err := c.JoinGroup(uint32(g)); err != nil {
			return fmt.Errorf("conntrack events (group %d): %w", g, err)
		}
	}
	return nil
}

func readSysctl(name string) (string, error) {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// ChainRules is a chain and its rules, for RulesetMistakes.
type ChainRules struct {
	Chain *nftables.Chain
	Rules []*nftables.Rule
}

// beforeConntrack reports whether c is an ip, ip6 or inet base chain on
// prerouting or output that runs before conntrack.
func beforeConntrack(c *nftables.Chain) bool {
	switch c.Table.Family {
	case nftables.TableFamilyIPv4, nftables.TableFamilyIPv6, nftables.TableFamilyINet:
	default:
		return false
	}
	if c.Hooknum == nil || c.Priority == nil {
		return false
	}
	if *c.Hooknum != *nftables.ChainHookPrerouting && *c.Hooknum != *nftables.ChainHookOutput {
		return false
	}
	return int(*c.Priority) < conntrackPriority
}

// RulesetMistakes finds `ct helper set` in chains that run before
// conntrack (prerouting or output at raw priority, say): the packet has no
// conntrack entry yet, so the assignment silently does nothing; and queue
// rules without bypass, which drop packets while the daemon is down.
func RulesetMistakes(chains []ChainRules) []Check {
	var out []Check
	for _, cr := range chains {
		c := cr.Chain
		if chainsToCheck(c) {
			out = append(out, queueMistakes(cr)...)
		}
		if !beforeConntrack(c) {
			continue
		}
		for _, r := range cr.Rules {
			for _, e := range r.Exprs {
				o, ok := e.(*expr.Objref)
				if !ok || o.Type != unix.NFT_OBJECT_CT_HELPER {
					continue
				}
				hook := "prerouting"
				if *c.Hooknum == *nftables.ChainHookOutput {
					hook = "output"
				}
				out = append(out, Check{Name: "ruleset", Status: CheckWarn, Detail: fmt.Sprintf(
					"table %s chain %s (hook %s, priority %d): `ct helper set %q` runs before conntrack (priority %d) and does nothing; "+
						"assign helpers in a chain at priority above %d (e.g. filter)",
					tableName(c.Table), c.Name, hook, int(*c.Priority), o.Name, conntrackPriority, conntrackPriority)})
			}
		}
	}
	return out
}

func tableName(t *nftables.Table) string {
	fam := map[nftables.TableFamily]string{
		nftables.TableFamilyINet: "inet", nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6",
		nftables.TableFamilyARP: "arp", nftables.TableFamilyNetdev: "netdev", nftables.TableFamilyBridge: "bridge",
	}[t.Family]
	if fam == "" {
		fam = fmt.Sprintf("family%d", t.Family)
	}
	return fam + " " + t.Name
}
