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
}

// conntrackPriority is NF_IP_PRI_CONNTRACK: chains before it see packets
// without a conntrack entry.
const conntrackPriority = -200

// Probe checks, in the calling process's network namespace, the kernel
// features the datapath uses and the ruleset mistakes it can see. It
// changes nothing but what the one probe batch adds and deletes at once.
func Probe(ctx context.Context, in ProbeInput) []Check {
	var out []Check
	add := func(name, status, format string, args ...any) {
		out = append(out, Check{Name: name, Status: status, Detail: fmt.Sprintf(format, args...)})
	}
	conn, err := nftables.New()
	if err != nil {
		add("nftables", CheckFail, "netlink: %v", err)
		return out
	}

	// Our table and its chains.
	tables, err := conn.ListTables()
	if err != nil {
		add("nftables", CheckFail, "listing tables: %v", err)
		return out
	}
	var own *nftables.Table
	for _, t := range tables {
		if t.Name == in.Table && t.Family == nftables.TableFamilyINet {
			own = t
		}
	}
	chains, chainsErr := conn.ListChains()
	if own == nil {
		add("table", CheckFail, "table inet %s is missing: someone deleted it; restart nfhelperd", in.Table)
	} else {
		n := 0
		for _, c := range chains {
			if c.Table.Name == own.Name && c.Table.Family == own.Family {
				n++
			}
		}
		add("table", CheckOK, "table inet %s installed (%d chains)", in.Table, n)
	}

	// The queue statement the running datapath's rules use.
	last := int(in.Queues.First) + int(in.Queues.Count) - 1
	seen := "no packet queued yet"
	if in.Packets > 0 {
		seen = fmt.Sprintf("%d packets read", in.Packets)
	}
	add("queue", CheckOK, "%s in use by datapath %s, queues %d-%d bound (%s)", kernel.QueueExprDetail(in.QueueExpr), in.Datapath, in.Queues.First, last, seen)

	// What the kernel has, and which datapath it would get.
	features := kernel.Probe(conn)
	if in.Choose != nil {
		chosen, err := in.Choose(features)
		out = append(out, KernelChecks(features, in.Datapath, chosen, err)...)
	} else {
		out = append(out, KernelChecks(features, in.Datapath, in.Datapath, nil)...)
	}

	// Conntrack events: connection ends (and states, for lc/wlc/sed/nq).
	switch {
	case in.ConntrackErr != nil:
		add("conntrack-events", CheckFail, "the daemon's listener failed: %v; connections end only by their timeouts", in.ConntrackErr)
	default:
		if err := probeConntrackEvents(); err != nil {
			add("conntrack-events", CheckFail, "%v; connections end only by their timeouts", err)
		} else {
			add("conntrack-events", CheckOK, "conntrack destroy and update events available")
		}
	}
	switch v, err := readSysctl("net/netfilter/nf_conntrack_acct"); {
	case err != nil:
		add("conntrack-acct", CheckInfo, "unknown: %v", err)
	case v == "0":
		add("conntrack-acct", CheckWarn, "net.netfilter.nf_conntrack_acct=0: real servers' packet and byte counters stay 0")
	default:
		add("conntrack-acct", CheckOK, "net.netfilter.nf_conntrack_acct=%s: real servers count packets and bytes", v)
	}

	// Forwarding, for the families the services use.
	var v4, v6 bool
	for _, s := range in.Services {
		if s.VIP.Addr().Unmap().Is4() {
			v4 = true
		} else {
			v6 = true
		}
	}
	for _, f := range []struct {
		need         bool
		sysctl, name string
	}{{v4, "net/ipv4/ip_forward", "net.ipv4.ip_forward"}, {v6, "net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding"}} {
		if !f.need {
			continue
		}
		switch v, err := readSysctl(f.sysctl); {
		case err != nil:
			add("forwarding", CheckInfo, "%s unknown: %v", f.name, err)
		case v == "0":
			add("forwarding", CheckFail, "%s=0: connections to real servers are not routed", f.name)
		default:
			add("forwarding", CheckOK, "%s=%s", f.name, v)
		}
	}

	// Other tables' mistakes.
	if chainsErr != nil {
		add("ruleset", CheckInfo, "listing chains: %v", chainsErr)
		return out
	}
	var cr []ChainRules
	others := map[string]bool{}
	for _, c := range chains {
		if c.Table.Name == in.Table && c.Table.Family == nftables.TableFamilyINet {
			continue
		}
		others[tableName(c.Table)] = true
		if !chainsToCheck(c) {
			continue
		}
		rules, err := conn.GetRules(c.Table, c)
		if err != nil {
			add("ruleset", CheckInfo, "listing chain %s %s: %v", tableName(c.Table), c.Name, err)
			continue
		}
		cr = append(cr, ChainRules{Chain: c, Rules: rules})
	}
	found := RulesetMistakes(cr)
	out = append(out, found...)
	if len(found) == 0 {
		add("ruleset", CheckOK, "no mistakes found in %d other tables", len(others))
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
