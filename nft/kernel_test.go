package nft

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// kernelSpec: kernel-scheduled services of every kind beside a
// daemon-scheduled one: rr, wrr with persistence (/24), a helped sh with
// persistence on IPv6, mh by source and port over UDP, one whose servers
// are all out with a sorry server, one with none at all.
func kernelSpec() *Spec {
	ap := netip.MustParseAddrPort
	s1, s2, s3 := ap("10.0.0.11:80"), ap("10.0.0.12:80"), ap("10.0.0.13:80")
	v6a, v6b := ap("[fd00::11]:21"), ap("[fd00::12]:21")
	return &Spec{
		Table: "nfhelper", QueueNum: 100, QueueTotal: 1, MarkMask: 0x00ff0000, KernelFTP: true, MSSRoom: 576,
		Services: []Service{
			{VIP: ap("198.51.100.10:80"), Servers: []Server{{s1, 0x10000, 1, false}, {s2, 0x20000, 1, false}},
				Kernel: &KernelSched{By: ByCounter, Size: 2, Slots: []SlotRun{{0, 0, s1}, {1, 1, s2}}}},
			{VIP: ap("198.51.100.10:8080"), Servers: []Server{{s1, 0x30000, 3, false}, {s2, 0x40000, 1, false}, {s3, 0x50000, 1, true}},
				Kernel: &KernelSched{By: ByCounter, Size: 4, Slots: []SlotRun{{0, 2, s1}, {3, 3, s2}},
					Persist: &Persist{Timeout: 5 * time.Minute, Prefix4: 24, Prefix6: 64}}},
			{VIP: ap("[2001:db8:1::10]:21"), Helped: true, Servers: []Server{{v6a, 0x60000, 1, false}, {v6b, 0x70000, 1, false}},
				Kernel: &KernelSched{By: BySource, Size: 4, Slots: []SlotRun{{0, 1, v6a}, {2, 3, v6b}},
					Persist: &Persist{Timeout: time.Hour, Prefix4: 32, Prefix6: 128}}},
			{VIP: ap("198.51.100.10:53"), UDP: true, Servers: []Server{{ap("10.0.0.11:53"), 0x80000, 1, false}},
				Kernel: &KernelSched{By: BySourcePort, Size: 3, Slots: []SlotRun{{0, 2, ap("10.0.0.11:53")}}}},
			{VIP: ap("198.51.100.10:443"), Servers: []Server{{ap("10.0.0.11:443"), 0x90000, 0, false}},
				Sorry:  &Server{ap("10.0.0.99:443"), 0xa0000, 1, false},
				Kernel: &KernelSched{By: ByCounter, Size: 1, Persist: &Persist{Timeout: time.Minute}}},
			{VIP: ap("198.51.100.10:25"), Kernel: &KernelSched{By: ByCounter, Size: 1}},
			{VIP: ap("198.51.100.10:21"), Helped: true, Servers: []Server{{ap("10.0.0.11:21"), 0xb0000, 1, false}}},
		},
	}
}

func TestInstallKernelScheduledGolden(t *testing.T) {
	ns, c := testNetns(t)
	if _, err := Install(c, kernelSpec()); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, ns, "ruleset-ksched.nft")
}

func TestSlotDiff(t *testing.T) {
	ap := netip.MustParseAddrPort
	a, b, c := ap("10.0.0.1:80"), ap("10.0.0.2:80"), ap("10.0.0.3:80")
	old := slotUnits([]SlotRun{{0, 4, a}, {5, 9, b}, {10, 14, c}}, true)
	del, add := slotDiff(old, slotUnits([]SlotRun{{0, 4, a}, {5, 7, b}, {8, 14, c}}, true))
	if !slices.Equal(del, []SlotRun{{5, 9, b}, {10, 14, c}}) || !slices.Equal(add, []SlotRun{{5, 7, b}, {8, 14, c}}) {
		t.Errorf("interval diff: del %v add %v", del, add)
	}
	// A hash map changes by slot.
	old = slotUnits([]SlotRun{{0, 3, a}, {4, 7, b}}, false)
	del, add = slotDiff(old, slotUnits([]SlotRun{{0, 2, a}, {3, 7, b}}, false))
	if !slices.Equal(del, []SlotRun{{3, 3, a}}) || !slices.Equal(add, []SlotRun{{3, 3, b}}) {
		t.Errorf("hash diff: del %v add %v", del, add)
	}
	if del, add := slotDiff(old, old); len(del)+len(add) != 0 {
		t.Errorf("no change: del %v add %v", del, add)
	}
	els := unitElements([]SlotRun{{5, 7, b}}, true, true)
	if len(els) != 2 || els[1].IntervalEnd != true || string(els[1].Key) != "\x00\x00\x00\x08" || els[0].Val == nil {
		t.Errorf("interval elements %+v", els)
	}
}

func TestMSSElements(t *testing.T) {
	els := mssElements(576)
	lookup := func(mss int) int {
		val := -1
		for i, e := range els {
			k := int(e.Key[0])<<8 | int(e.Key[1])
			if k > mss {
				break
			}
			if e.IntervalEnd {
				val = -1
			} else {
				val = int(els[i].Val[0])<<8 | int(els[i].Val[1])
			}
		}
		return val
	}
	for mss, want := range map[int]int{536: -1, 537: 536, 1119: 536, 1120: 544, 1460: 880, 1463: 880, 8960: 8384, 65495: 9216 - 576} {
		if got := lookup(mss); got != want {
			t.Errorf("MSS %d: %d, want %d", mss, got, want)
		}
	}
	if len(els) > 2100 {
		t.Errorf("%d elements", len(els))
	}
}

func TestKernelID(t *testing.T) {
	ap := netip.MustParseAddrPort
	if id := kernelID(ap("198.51.100.40:8080"), false); id != "tcp_c6336428_8080" {
		t.Error(id)
	}
	if id := kernelID(ap("[2001:db8::1]:53"), true); !strings.HasPrefix(id, "udp_20010db8") || len(id) != 4+32+3 {
		t.Error(id)
	}
}
