package daemon

import (
	"fmt"
	"math"

	"golang.org/x/net/bpf"

	"github.com/nfhelper/nfhelper/nft"
)

// The conntrack event socket's filter. Kernel-scheduled connections are
// none of the daemon's business; without a filter it would wake for each
// of their events (several per connection) only to drop them. The rules
// mark in conntrack the connections it follows (nft.FollowMark) and the
// data connections it opened (nft.ChannelMark); the kernel hands the
// socket only their events.

// followedMarks are the ct mark bits whose events the daemon reads.
const followedMarks = nft.FollowMark | nft.ChannelMark

// Where a ctnetlink event's attributes start (after struct nlmsghdr and
// struct nfgenmsg), and the mark's attribute (CTA_MARK, a big-endian u32).
const (
	ctEventAttrs = 16 + 4
	ctaMark      = 8
)

// eventFilter passes events whose ct mark has one of bits set. The kernel
// puts CTA_MARK in an event only when the mark is not zero; SKF_AD_NLATTR
// (bpf.ExtNetlinkAttr) finds it among the top-level attributes.
func eventFilter(bits uint32) []bpf.Instruction {
	return []bpf.Instruction{
		bpf.LoadConstant{Dst: bpf.RegA, Val: ctEventAttrs},
		bpf.LoadConstant{Dst: bpf.RegX, Val: ctaMark},
		bpf.LoadExtension{Num: bpf.ExtNetlinkAttr}, // A: the attribute's offset, 0 if none
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipTrue: 4},
		bpf.TAX{},
		bpf.LoadIndirect{Off: 4, Size: 4}, // past struct nlattr
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: bits, SkipFalse: 1},
		bpf.RetConstant{Val: math.MaxUint32},
		bpf.RetConstant{Val: 0},
	}
}

// assembledEventFilter is eventFilter(followedMarks) for SO_ATTACH_FILTER.
func assembledEventFilter() ([]bpf.RawInstruction, error) {
	raw, err := bpf.Assemble(eventFilter(followedMarks))
	if err != nil {
		return nil, fmt.Errorf("conntrack event filter: %w", err)
	}
	return raw, nil
}
