package ctl

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
)

// The tests below pin Probe's checks one group at a time: Probe itself
// needs netlink and root.

func TestOwnTableCheck(t *testing.T) {
	own := &nftables.Table{Name: "nfhelper", Family: nftables.TableFamilyINet}
	ip := &nftables.Table{Name: "nfhelper", Family: nftables.TableFamilyIPv4}
	chains := []*nftables.Chain{{Table: own, Name: "a"}, {Table: ip, Name: "b"}, {Table: own, Name: "c"}}
	want := Check{Name: "table", Status: CheckOK, Detail: "table inet nfhelper installed (2 chains)"}
	if got := ownTableCheck("nfhelper", []*nftables.Table{ip, own}, chains); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	want = Check{Name: "table", Status: CheckFail, Detail: "table inet nfhelper is missing: someone deleted it; restart nfhelperd"}
	if got := ownTableCheck("nfhelper", []*nftables.Table{ip}, chains); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestQueueCheck(t *testing.T) {
	in := ProbeInput{Datapath: "dp", Queues: Queues{First: 100, Count: 4}, QueueExpr: kernel.QueueXt}
	want := Check{Name: "queue", Status: CheckOK, Detail: kernel.QueueExprDetail(kernel.QueueXt) + " in use by datapath dp, queues 100-103 bound (no packet queued yet)"}
	if got := queueCheck(in); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	in.Packets = 7
	want.Detail = kernel.QueueExprDetail(kernel.QueueXt) + " in use by datapath dp, queues 100-103 bound (7 packets read)"
	if got := queueCheck(in); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestDatapathChecks(t *testing.T) {
	var f kernel.Features
	if got, want := datapathChecks(f, "dp", nil), KernelChecks(f, "dp", "dp", nil); !reflect.DeepEqual(got, want) {
		t.Errorf("without choose: %+v, want %+v", got, want)
	}
	errNone := errors.New("none")
	choose := func(kernel.Features) (string, error) { return "other", errNone }
	if got, want := datapathChecks(f, "dp", choose), KernelChecks(f, "dp", "other", errNone); !reflect.DeepEqual(got, want) {
		t.Errorf("with choose: %+v, want %+v", got, want)
	}
}

// sysctls answers for the sysctls in it; the others are missing.
type sysctls map[string]string

func (s sysctls) read(name string) (string, error) {
	if v, ok := s[name]; ok {
		return v, nil
	}
	return "", errors.New("no " + name)
}

func TestConntrackChecks(t *testing.T) {
	probed := false
	probeOK := func() error { probed = true; return nil }
	got := conntrackChecks(errors.New("boom"), probeOK, sysctls{"net/netfilter/nf_conntrack_acct": "0"}.read)
	want := []Check{
		{Name: "conntrack-events", Status: CheckFail, Detail: "the daemon's listener failed: boom; connections end only by their timeouts"},
		{Name: "conntrack-acct", Status: CheckWarn, Detail: "net.netfilter.nf_conntrack_acct=0: real servers' packet and byte counters stay 0"},
	}
	if !reflect.DeepEqual(got, want) || probed {
		t.Errorf("listener failed: %+v (probed %v), want %+v", got, probed, want)
	}
	got = conntrackChecks(nil, probeOK, sysctls{"net/netfilter/nf_conntrack_acct": "1"}.read)
	want = []Check{
		{Name: "conntrack-events", Status: CheckOK, Detail: "conntrack destroy and update events available"},
		{Name: "conntrack-acct", Status: CheckOK, Detail: "net.netfilter.nf_conntrack_acct=1: real servers count packets and bytes"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("all well: %+v, want %+v", got, want)
	}
	got = conntrackChecks(nil, func() error { return errors.New("no events") }, sysctls{}.read)
	want = []Check{
		{Name: "conntrack-events", Status: CheckFail, Detail: "no events; connections end only by their timeouts"},
		{Name: "conntrack-acct", Status: CheckInfo, Detail: "unknown: no net/netfilter/nf_conntrack_acct"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("nothing: %+v, want %+v", got, want)
	}
}

func TestForwardingChecks(t *testing.T) {
	v4 := ipvs.ServiceView{VIP: netip.MustParseAddrPort("[::ffff:198.51.100.10]:21")}
	v6 := ipvs.ServiceView{VIP: netip.MustParseAddrPort("[2001:db8::10]:21")}
	if got := forwardingChecks(nil, sysctls{}.read); got != nil {
		t.Errorf("no services: %+v", got)
	}
	got := forwardingChecks([]ipvs.ServiceView{v6, v4}, sysctls{"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "0"}.read)
	want := []Check{
		{Name: "forwarding", Status: CheckOK, Detail: "net.ipv4.ip_forward=1"},
		{Name: "forwarding", Status: CheckFail, Detail: "net.ipv6.conf.all.forwarding=0: connections to real servers are not routed"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("both families: %+v, want %+v", got, want)
	}
	got = forwardingChecks([]ipvs.ServiceView{v6}, sysctls{}.read)
	want = []Check{{Name: "forwarding", Status: CheckInfo, Detail: "net.ipv6.conf.all.forwarding unknown: no net/ipv6/conf/all/forwarding"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("v6 only: %+v, want %+v", got, want)
	}
}

func TestOtherTablesChecks(t *testing.T) {
	own := &nftables.Table{Name: "nfhelper", Family: nftables.TableFamilyINet}
	usr := &nftables.Table{Name: "usr", Family: nftables.TableFamilyIPv4}
	nd := &nftables.Table{Name: "nd", Family: nftables.TableFamilyNetdev}
	bad := &nftables.Table{Name: "bad", Family: nftables.TableFamilyIPv6}
	rawPre := &nftables.Chain{Table: usr, Name: "raw_pre", Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw}
	helper := &nftables.Rule{Exprs: []expr.Any{&expr.Objref{Type: unix.NFT_OBJECT_CT_HELPER, Name: "ftp"}}}
	rules := map[*nftables.Chain][]*nftables.Rule{}
	getRules := func(_ *nftables.Table, c *nftables.Chain) ([]*nftables.Rule, error) {
		if c.Table == bad {
			return nil, errors.New("gone")
		}
		return rules[c], nil
	}
	chains := []*nftables.Chain{
		{Table: own, Name: "pre", Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw},
		rawPre,
		{Table: usr, Name: "regular"},
		{Table: nd, Name: "ingress", Hooknum: nftables.ChainHookIngress, Priority: nftables.ChainPriorityFilter},
		{Table: bad, Name: "out", Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter},
	}
	got := otherTablesChecks("nfhelper", chains, nil, getRules)
	want := []Check{
		{Name: "ruleset", Status: CheckInfo, Detail: "listing chain ip6 bad out: gone"},
		{Name: "ruleset", Status: CheckOK, Detail: "no mistakes found in 3 other tables"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("no mistakes: %+v, want %+v", got, want)
	}
	// Our own table's mistakes are not reported: only other tables'.
	rules[chains[0]] = []*nftables.Rule{helper}
	rules[rawPre] = []*nftables.Rule{helper}
	got = otherTablesChecks("nfhelper", chains, nil, getRules)
	want = append(want[:1:1], RulesetMistakes([]ChainRules{{rawPre, rules[rawPre]}})...)
	if len(got) != 2 || !reflect.DeepEqual(got, want) {
		t.Errorf("a mistake: %+v, want %+v", got, want)
	}
	got = otherTablesChecks("nfhelper", nil, errors.New("denied"), getRules)
	want = []Check{{Name: "ruleset", Status: CheckInfo, Detail: "listing chains: denied"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("listing fails: %+v, want %+v", got, want)
	}
}
