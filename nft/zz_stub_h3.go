package nft

import (
	"net/netip"
	"time"

	"github.com/google/nftables"
)

// Stub of h2's contract, for h3 to compile against (delete at merge). The
// fields Service.Kernel and Server.Down are in ruleset.go (commit "nft: stub
// fields").

const FollowMark = 0x04000000

type SlotKey uint8

const (
	ByCounter SlotKey = iota
	BySource
	BySourcePort
)

type KernelSched struct {
	By      SlotKey
	Size    uint32
	Slots   []SlotRun
	Persist *Persist
}

type SlotRun struct {
	First, Last uint32
	Server      netip.AddrPort
}

type Persist struct {
	Timeout          time.Duration
	Prefix4, Prefix6 int
}

func (rs *Ruleset) Templates(c *nftables.Conn, vip netip.AddrPort, udp bool) (int, error) {
	return 0, nil
}
