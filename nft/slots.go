package nft

import (
	"encoding/binary"
	"slices"

	"github.com/google/nftables"
)

// slotUnits are a slot map's contents in the units an update deletes or
// adds whole: a run of an interval map (its start and end elements; an
// interval map never holds a start without its end, which the kernel's
// overlap checks require between any two messages), or one slot of a
// hash map.
func slotUnits(runs []SlotRun, interval bool) map[SlotRun]bool {
	units := map[SlotRun]bool{}
	for _, r := range runs {
		if interval {
			units[r] = true
			continue
		}
		for k := r.First; ; k++ {
			units[SlotRun{k, k, r.Server}] = true
			if k == r.Last {
				break
			}
		}
	}
	return units
}

// slotDiff is what turns the units old into want: deleted units first,
// then added ones, in key order (an interval map's runs one after the
// other, as nft adds them).
func slotDiff(old, want map[SlotRun]bool) (del, add []SlotRun) {
	for u := range old {
		if !want[u] {
			del = append(del, u)
		}
	}
	for u := range want {
		if !old[u] {
			add = append(add, u)
		}
	}
	byFirst := func(a, b SlotRun) int { return int(int64(a.First) - int64(b.First)) }
	slices.SortFunc(del, byFirst)
	slices.SortFunc(add, byFirst)
	return del, add
}

// unitElements are the map elements of units; without values to delete.
func unitElements(units []SlotRun, interval, values bool) []nftables.SetElement {
	var els []nftables.SetElement
	for _, u := range units {
		start := nftables.SetElement{Key: slotKey(u.First, interval)}
		if values {
			start.Val = addrPortKey(u.Server)
		}
		els = append(els, start)
		if interval {
			// Last+1 fits: Last < Size.
			els = append(els, nftables.SetElement{Key: slotKey(u.Last+1, true), IntervalEnd: true})
		}
	}
	return els
}

// slotKey encodes a slot number as the map's key: big-endian in interval
// maps (ordered by bytes), host order in hash maps (as jhash writes it).
func slotKey(n uint32, interval bool) []byte {
	if interval {
		return binary.BigEndian.AppendUint32(nil, n)
	}
	return binary.NativeEndian.AppendUint32(nil, n)
}

// updateSlots adds to the batch what turns ks's slot map into runs.
func updateSlots(c *nftables.Conn, ks *kernelSvc, runs []SlotRun) error {
	want := slotUnits(runs, ks.slots.Interval)
	del, add := slotDiff(ks.units, want)
	if len(del) > 0 {
		if err := c.SetDeleteElements(ks.slots, unitElements(del, ks.slots.Interval, false)); err != nil {
			return err
		}
	}
	if len(add) > 0 {
		if err := c.SetAddElements(ks.slots, unitElements(add, ks.slots.Interval, true)); err != nil {
			return err
		}
	}
	ks.units = want
	return nil
}
