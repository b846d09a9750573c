package nft

import (
	"net/netip"
	"testing"

	"github.com/google/nftables"
)

// A restarted daemon carries the offsets and acks elements of the
// connections it took back only; learned servers and channels all.
func TestKeepConns(t *testing.T) {
	ap := netip.MustParseAddrPort
	client, vip, rs := ap("203.0.113.2:40000"), ap("198.51.100.10:21"), ap("10.0.0.11:21")
	ended := ap("203.0.113.2:40001")
	cr := &Carried{elems: map[string][]nftables.SetElement{
		"offsets4": {{Key: connKey(client, vip), Val: make([]byte, 8)}, {Key: connKey(ended, vip), Val: make([]byte, 8)}},
		"acks4":    {{Key: connKey(client, rs)}, {Key: connKey(ended, rs)}},
		"watched4": {{Key: addrPortKey(rs)}},
	}}
	cr.KeepConns(map[[2]netip.AddrPort]bool{{client, vip}: true, {client, rs}: true})
	if off := cr.Offsets(); len(off) != 1 || len(cr.elems["offsets4"]) != 1 {
		t.Errorf("offsets %v", off)
	}
	if acks := cr.Acks(); len(acks) != 1 || !acks[[2]netip.AddrPort{client, rs}] {
		t.Errorf("acks %v", acks)
	}
	if cr.Len() != 3 {
		t.Errorf("%d elements carried, want 3", cr.Len())
	}
}

// Carried replies elements (TFTP requests awaiting their answer) are
// counted, but they are no helped connections.
func TestCarriedReplies(t *testing.T) {
	cr := &Carried{elems: map[string][]nftables.SetElement{
		"replies4": {{Key: make([]byte, 12), Val: make([]byte, 4)}},
		"replies6": {{Key: make([]byte, 36), Val: make([]byte, 16)}},
	}}
	if cr.helped() || !cr.replies() || cr.Len() != 2 {
		t.Errorf("helped %v, replies %v, %d elements", cr.helped(), cr.replies(), cr.Len())
	}
	cr.elems["bypassed4"] = []nftables.SetElement{{Key: make([]byte, 8), Val: make([]byte, 4)}}
	if !cr.helped() {
		t.Error("a bypassed element is a helped connection's")
	}
	var none *Carried
	if none.replies() || none.helped() {
		t.Error("nil Carried")
	}
}
