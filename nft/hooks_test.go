package nft

import (
	"errors"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/nfhelper/nfhelper/kernel"
)

// TestHooksFor: which base chains a configuration needs, on either
// datapath.
func TestHooksFor(t *testing.T) {
	ap := netip.MustParseAddrPort
	s1 := ap("10.0.0.11:80")
	plain := Service{VIP: ap("198.51.100.10:80"), Servers: []Server{{s1, 0x10000, 1, false}},
		Kernel: &KernelSched{By: ByCounter, Size: 1, Slots: []SlotRun{{0, 0, s1}}}}
	empty := plain
	empty.Kernel = &KernelSched{By: ByCounter, Size: 1}
	sorry := empty
	sorry.Sorry = &Server{ap("10.0.0.99:80"), 0x20000, 1, false}
	persistent := plain
	persistent.Kernel = &KernelSched{By: ByCounter, Size: 1, Slots: plain.Kernel.Slots, Persist: &Persist{Timeout: time.Minute}}
	helped := plain
	helped.Helped = true
	queued := Service{VIP: ap("198.51.100.10:8080"), Servers: []Server{{s1, 0x10000, 1, false}}}
	tftp := Service{VIP: ap("198.51.100.10:69"), UDP: true, Servers: []Server{{s1, 0x10000, 1, false}}, Replies: time.Minute}
	udpAddOn := AddOn{Match: ap("203.0.113.1:69"), Mark: 0x40000, UDP: true, Replies: time.Minute}
	const (
		raw, mangle, clean, fwd, unseen, snat, replies = "raw", "mangle", "clean", "fwd", "unseen", "snat", "replies"
	)
	names := map[string]hook{raw: hookRaw, mangle: hookMangle, clean: hookClean, fwd: hookForward, unseen: hookUnseen, snat: hookSNAT, replies: hookReplies}
	for _, tc := range []struct {
		name       string
		spec       Spec
		ctHelper   string
		kernelTFTP bool
		left       bool
		replies    bool // carried replies elements
		want       []string
	}{
		{name: "nothing"},
		{name: "plain kernel-scheduled", spec: Spec{Services: []Service{plain, plain}}},
		{name: "no server", spec: Spec{Services: []Service{plain, empty}}, want: []string{fwd}},
		{name: "sorry server", spec: Spec{Services: []Service{sorry}}},
		{name: "persistence", spec: Spec{Services: []Service{persistent}}, want: []string{clean}},
		{name: "daemon-scheduled", spec: Spec{Services: []Service{plain, queued}}, want: []string{raw, mangle, clean, fwd}},
		{name: "helped", spec: Spec{Services: []Service{helped}}, want: []string{raw, clean, fwd, unseen, snat}},
		{name: "helped, kernel datapath", spec: Spec{Services: []Service{helped}}, ctHelper: "h", want: []string{mangle, clean, fwd, snat}},
		{name: "tftp", spec: Spec{Services: []Service{plain, tftp}}, want: []string{raw, mangle, clean, fwd, snat, replies}},
		{name: "add-on", spec: Spec{AddOns: []AddOn{{Match: ap("198.51.100.20:21"), Mark: 0x40000}}}, want: []string{raw, clean, fwd, unseen, snat}},
		{name: "udp add-on", spec: Spec{AddOns: []AddOn{udpAddOn}}, want: []string{raw, clean, fwd, unseen, snat, replies}},
		// Its requests that bypass a dead daemon get the kernel's TFTP
		// helper after the forward chain.
		{name: "udp add-on, kernel datapath", spec: Spec{AddOns: []AddOn{udpAddOn}}, ctHelper: "h", kernelTFTP: true, want: []string{mangle, clean, fwd, unseen, snat, replies}},
		{name: "udp add-on, kernel datapath without the kernel's tftp helper", spec: Spec{AddOns: []AddOn{udpAddOn}}, ctHelper: "h", want: []string{mangle, clean, fwd, snat, replies}},
		{name: "live helped connections", spec: Spec{Services: []Service{plain}, LiveVIPs: []netip.AddrPort{ap("198.51.100.10:21")}},
			want: []string{raw, clean, fwd, unseen, snat}},
		{name: "carried channels", spec: Spec{Services: []Service{plain}}, left: true, want: []string{raw, clean, fwd, unseen, snat}},
		// Requests awaiting their answer are no helped connections: their
		// answers need srcnat (and new_conn's mark) only.
		{name: "carried replies", spec: Spec{Services: []Service{plain}}, replies: true, want: []string{clean, snat}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := &Ruleset{queue: Spec{CtHelper: tc.ctHelper, KernelFTP: true, KernelTFTP: tc.kernelTFTP}}
			var want hookSet
			for _, n := range tc.want {
				want[names[n]] = true
			}
			if got := rs.hooksFor(&tc.spec, tc.left, tc.replies); got != want {
				t.Errorf("hooks %v, want %v (%v)", got, want, tc.want)
			}
		})
	}
}

// baseChains are the names of table inet nfhelper's base chains in c's
// namespace, sorted.
func baseChains(t *testing.T, c *nftables.Conn) []string {
	t.Helper()
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ch := range chains {
		if ch.Table.Name == "nfhelper" && ch.Hooknum != nil {
			names = append(names, ch.Name)
		}
	}
	slices.Sort(names)
	return names
}

// TestHooksFollowUpdates: a table of plain kernel-scheduled services has
// no base chain a forwarded packet walks but dstnat; when its only server
// goes, an Update adds the forward chain in the same batch and a new
// connection is refused at once; when it comes back, or when a helped
// service comes and goes, the chains follow.
func TestHooksFollowUpdates(t *testing.T) {
	router, client, c := refuseTopology(t)
	ap := netip.MustParseAddrPort
	// The routed VIP's server is the router's own listener.
	server := ap("10.99.0.1:2121")
	serve(t, router, "tcp", server.String())
	up := Service{VIP: ap("198.51.100.11:80"), Servers: []Server{{server, 0x10000, 1, false}},
		Kernel: &KernelSched{By: ByCounter, Size: 1, Slots: []SlotRun{{0, 0, server}}}}
	down := up
	down.Servers = []Server{{server, 0x10000, 1, true}}
	down.Kernel = &KernelSched{By: ByCounter, Size: 1}
	helped := Service{VIP: ap("198.51.100.10:21"), Helped: true, Servers: []Server{{ap("10.0.0.11:21"), 0x20000, 1, false}}}
	spec := &Spec{Table: "nfhelper", QueueNum: 100, QueueTotal: 1, MarkMask: 0x00ff0000, KernelFTP: true, Services: []Service{up}}
	spec.NativeQueue = kernel.ProbeNativeQueue(c) == nil
	rs, err := Install(c, spec)
	if err != nil {
		t.Fatal(err)
	}
	plainChains := []string{"dstnat", "heartbeat", "refuse_input"}
	dial := func() error {
		var err error
		inNetns(t, client, func() { err = dialRefused("tcp", "198.51.100.11:80") })
		return err
	}
	check := func(step string, want []string, refused bool) {
		t.Helper()
		if got := baseChains(t, c); !slices.Equal(got, want) {
			t.Errorf("%s: base chains %v, want %v", step, got, want)
		}
		start := time.Now()
		err := dial()
		took := time.Since(start)
		switch {
		case refused && (!errors.Is(err, syscall.ECONNREFUSED) || took > 500*time.Millisecond):
			t.Errorf("%s: %v after %v, want refused at once", step, err, took.Round(time.Millisecond))
		case !refused && err != nil:
			t.Errorf("%s: %v, want connected", step, err)
		}
	}
	check("installed", plainChains, false)
	for _, step := range []struct {
		name    string
		svcs    []Service
		want    []string
		refused bool
	}{
		{"server down", []Service{down}, []string{"dstnat", "forward", "heartbeat", "refuse_input"}, true},
		{"server back", []Service{up}, plainChains, false},
		{"daemon-scheduled helped service added", []Service{up, helped},
			[]string{"dstnat", "forward", "forward_unseen", "heartbeat", "mangle_prerouting", "prerouting", "raw_prerouting", "refuse_input", "srcnat"}, false},
		{"helped service removed", []Service{up}, plainChains, false},
	} {
		spec.Services = step.svcs
		if err := rs.Update(c, spec); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		check(step.name, step.want, step.refused)
	}
}
