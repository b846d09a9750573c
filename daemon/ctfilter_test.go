package daemon

import (
	"encoding/binary"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/net/bpf"

	"github.com/nfhelper/nfhelper/nft"
)

// ctEvent is a ctnetlink event as the kernel sends it: struct nlmsghdr,
// struct nfgenmsg, then the attributes: tuples (the original one holding
// an attribute of CTA_MARK's number, which is not a mark), status,
// timeout, and CTA_MARK when mark is not zero, as the kernel leaves it out.
func ctEvent(t *testing.T, mark uint32) []byte {
	t.Helper()
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Nested(1|netlink.Nested, func(nae *netlink.AttributeEncoder) error {
		nae.Bytes(ctaMark, []byte{0xff, 0xff, 0xff, 0xff})
		return nil
	})
	ae.Nested(2|netlink.Nested, func(nae *netlink.AttributeEncoder) error {
		nae.Uint16(3, 80)
		return nil
	})
	ae.Uint32(3, 0x18e) // CTA_STATUS
	ae.Uint32(7, 120)   // CTA_TIMEOUT
	if mark != 0 {
		ae.Uint32(ctaMark, mark)
	}
	ae.Uint32(12, 0xdeadbeef) // CTA_ID
	attrs, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, ctEventAttrs, ctEventAttrs+len(attrs))
	binary.NativeEndian.PutUint32(msg, uint32(cap(msg)))
	binary.NativeEndian.PutUint16(msg[4:], 1<<8) // IPCTNL_MSG_CT_NEW of NFNL_SUBSYS_CTNETLINK
	msg[16] = 2                                  // AF_INET
	return append(msg, attrs...)
}

// nlaFind is the kernel's SKF_AD_NLATTR (nla_find over the top-level
// attributes from offset a): the offset of the first attribute of type x,
// or 0.
func nlaFind(msg []byte, a, x uint32) uint32 {
	for off := int(a); off+4 <= len(msg); {
		n := int(binary.NativeEndian.Uint16(msg[off:]))
		if n < 4 || off+n > len(msg) {
			return 0
		}
		if uint32(binary.NativeEndian.Uint16(msg[off+2:])&0x3fff) == x {
			return uint32(off)
		}
		off += (n + 3) &^ 3
	}
	return 0
}

// runFilter runs eventFilter(bits) over msg in bpf.VM, which has no
// SKF_AD_NLATTR: the test stands in for it with nlaFind's answer.
func runFilter(t *testing.T, bits uint32, msg []byte) bool {
	t.Helper()
	prog := eventFilter(bits)
	ext := 0
	for i, ins := range prog {
		if le, ok := ins.(bpf.LoadExtension); ok && le.Num == bpf.ExtNetlinkAttr {
			prog[i] = bpf.LoadConstant{Dst: bpf.RegA, Val: nlaFind(msg, ctEventAttrs, ctaMark)}
			ext++
		}
	}
	if ext != 1 {
		t.Fatalf("%d SKF_AD_NLATTR loads", ext)
	}
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatal(err)
	}
	n, err := vm.Run(msg)
	if err != nil {
		t.Fatal(err)
	}
	return n != 0
}

// The filter passes events whose mark has FollowMark or ChannelMark, and
// no others: no mark, other bits, a mark-numbered attribute nested in a
// tuple.
func TestEventFilter(t *testing.T) {
	for _, c := range []struct {
		mark uint32
		pass bool
	}{
		{0, false},
		{nft.FollowMark, true},
		{nft.ChannelMark, true},
		{nft.FollowMark | nft.ChannelMark | 0x00ff00ff, true},
		{nft.UnseenMark, false},
		{0x00ff0000, false},
		{^uint32(followedMarks), false},
	} {
		if got := runFilter(t, followedMarks, ctEvent(t, c.mark)); got != c.pass {
			t.Errorf("mark %#08x: passed %v, want %v", c.mark, got, c.pass)
		}
	}
	if _, err := assembledEventFilter(); err != nil {
		t.Error(err)
	}
}
