package nft

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// ecmpSpec: behind ECMP, an mh service with persistence (IPv4), an sh one
// (IPv6) and, on the same IPv4 address, a second hash-scheduled helped
// service (its data connections follow the first); not eligible: an sh
// service hashing the port, a helped rr one, a plain mh one.
func ecmpSpec() *Spec {
	ap := netip.MustParseAddrPort
	s1, s2 := ap("10.0.0.11:21"), ap("10.0.0.12:21")
	v6a, v6b := ap("[fd00::11]:21"), ap("[fd00::12]:21")
	return &Spec{
		Table: "nfhelper", QueueNum: 100, QueueTotal: 1, MarkMask: 0x00ff0000, KernelFTP: true, ECMP: true,
		Services: []Service{
			{VIP: ap("198.51.100.10:21"), Helped: true, Servers: []Server{{s1, 0x10000, 1, false}, {s2, 0x20000, 1, false}},
				Kernel: &KernelSched{By: BySource, Size: 251, Slots: alternatingRuns(251, s1, s2),
					Persist: &Persist{Timeout: time.Hour, Prefix4: 24}}},
			{VIP: ap("198.51.100.10:2121"), Helped: true, Servers: []Server{{s1, 0x30000, 1, false}},
				Kernel: &KernelSched{By: BySource, Size: 1, Slots: []SlotRun{{0, 0, s1}}}},
			{VIP: ap("[2001:db8:1::10]:21"), Helped: true, Servers: []Server{{v6a, 0x40000, 1, false}, {v6b, 0x50000, 1, false}},
				Kernel: &KernelSched{By: BySource, Size: 256, Slots: []SlotRun{{0, 127, v6a}, {128, 255, v6b}}}},
			{VIP: ap("198.51.100.11:21"), Helped: true, Servers: []Server{{s1, 0x60000, 1, false}},
				Kernel: &KernelSched{By: BySourcePort, Size: 256, Slots: []SlotRun{{0, 255, s1}}}},
			{VIP: ap("198.51.100.12:21"), Helped: true, Servers: []Server{{s1, 0x70000, 1, false}},
				Kernel: &KernelSched{By: ByCounter, Size: 1, Slots: []SlotRun{{0, 0, s1}}}},
			{VIP: ap("198.51.100.13:80"), Servers: []Server{{ap("10.0.0.11:80"), 0x80000, 1, false}},
				Kernel: &KernelSched{By: BySource, Size: 1, Slots: []SlotRun{{0, 0, ap("10.0.0.11:80")}}}},
		},
	}
}

// alternatingRuns: runs of 7 slots over a and b in turn.
func alternatingRuns(size uint32, a, b netip.AddrPort) []SlotRun {
	var runs []SlotRun
	for first := uint32(0); first < size; first += 7 {
		s := a
		if first/7%2 == 1 {
			s = b
		}
		runs = append(runs, SlotRun{first, min(first+6, size-1), s})
	}
	return runs
}

func TestInstallECMPGolden(t *testing.T) {
	ns, c := testNetns(t)
	if _, err := Install(c, ecmpSpec()); err != nil {
		t.Fatal(err)
	}
	got := checkGolden(t, ns, "ruleset-ecmp.nft")
	for _, absent := range []string{"ecmp_tcp_c633640b_21", "ecmp_tcp_c633640c_21", "ecmp_tcp_c633640d_80"} {
		if strings.Contains(got, "chain "+absent) {
			t.Errorf("chain %s: its service's data connections cannot follow a hash", absent)
		}
	}
}

// TestUpdateECMP: turning ECMP off removes the ecmp chains and map
// elements in one batch; on again brings them back; a service that goes
// takes its chain along; the result equals a fresh install.
func TestUpdateECMP(t *testing.T) {
	ns, c := testNetns(t)
	spec := ecmpSpec()
	rs, err := Install(c, spec)
	if err != nil {
		t.Fatal(err)
	}
	list := func() string {
		t.Helper()
		out, err := nftList(t, ns, "list", "table", "inet", "nfhelper")
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		return withoutExpiry(out)
	}
	fresh := list()
	off := *ecmpSpec()
	off.ECMP = false
	if err := rs.Update(c, &off); err != nil {
		t.Fatal(err)
	}
	if got := list(); strings.Contains(got, "chain ecmp_") || strings.Contains(got, "goto ecmp_") {
		t.Errorf("ECMP off: ecmp chains or elements stay:\n%s", got)
	}
	if err := rs.Update(c, spec); err != nil {
		t.Fatal(err)
	}
	// The same rules, chains in another order.
	if got := list(); sortedLines(got) != sortedLines(fresh) {
		t.Errorf("ECMP on again differs from a fresh install:\n%s", got)
	}
	fewer := *ecmpSpec()
	fewer.Services = fewer.Services[1:]
	if err := rs.Update(c, &fewer); err != nil {
		t.Fatal(err)
	}
	got := list()
	if strings.Contains(got, "chain ecmp_tcp_c633640a_21 {") {
		t.Errorf("the removed service's ecmp chain stays:\n%s", got)
	}
	// The address's next eligible service takes its place.
	if !strings.Contains(got, "198.51.100.10 : goto ecmp_tcp_c633640a_2121") {
		t.Errorf("198.51.100.10 not handed to the 2121 service:\n%s", got)
	}
}

// sortedLines is a listing's lines in order, without the liveness
// element: it expires a second after the install that wrote it (no daemon
// renews it here), so a slow run (Debian's kernel under emulation) lists
// it in one listing and not in the next.
func sortedLines(s string) string {
	var lines []string
	inAlive := false
	for _, l := range strings.Split(s, "\n") {
		switch t := strings.TrimSpace(l); {
		case t == "set alive {":
			inAlive = true
		case inAlive && t == "}":
			inAlive = false
		case inAlive && strings.HasPrefix(t, "elements = "):
			continue
		}
		lines = append(lines, l)
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}
