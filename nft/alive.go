package nft

import (
	"encoding/binary"
	"errors"
	"fmt"

	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// AliveTimeout is how long the daemon counts as alive after Install or
// its last heartbeat: helped kernel-scheduled connections get its helper
// only while it does (a userspace helper nobody reads stalls them). It
// is also how long after a crash new helped sessions still wait for the
// dead daemon before the kernel's own FTP helper takes them: short. A
// daemon too starved to beat in time only hands new sessions to the
// kernel's helper early, which is harmless.
const AliveTimeout = time.Second

// AliveMark is the packet mark of the daemon's heartbeats (Heartbeat).
const AliveMark = 0x6e66686c

// aliveKey is the alive set's only element: tcp, looked up by the
// packet's protocol where only TCP is asked, so that nft prints the check
// (`meta l4proto @alive`; it cannot type a constant key). A heartbeat is
// a TCP SYN for the same reason.
var aliveKey = []byte{unix.IPPROTO_TCP}

// aliveSet is written from the packet path (a heartbeat renews its
// element): renewing it by a ruleset transaction instead would bump the
// ruleset's generation several times a second, and `nft list` starts
// over at every bump, so that listing a large table never ended.
func aliveSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: "alive", KeyType: nftables.TypeInetProto, HasTimeout: true, Timeout: AliveTimeout,
		Dynamic: true, Comment: "the daemon runs"}
}

// aliveIs matches a TCP packet while the alive element is present (or
// absent).
func aliveIs(s *nftables.Set, present bool) []expr.Any {
	return []expr.Any{
		l4protoLoad(unix.NFT_REG32_00),
		&expr.Lookup{SourceRegister: unix.NFT_REG32_00, SetName: s.Name, SetID: s.ID, Invert: !present},
	}
}

// heartbeatChain renews the alive element from a heartbeat, before
// conntrack (raw priority: the SYN leaves no entry), and drops it.
func heartbeatChain(a ruleAdder, alive *nftables.Set) {
	ch := a.chain("heartbeat", nftables.ChainTypeFilter, nftables.ChainHookOutput, *nftables.ChainPriorityRaw)
	a.rule(ch, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: unix.NFT_REG32_00},
		&expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG32_00, Data: native32(AliveMark)},
		l4protoLoad(unix.NFT_REG32_00),
		&expr.Cmp{Op: expr.CmpOpEq, Register: unix.NFT_REG32_00, Data: aliveKey},
		&expr.Dynset{SrcRegKey: unix.NFT_REG32_00, SetName: alive.Name, SetID: alive.ID,
			Operation: uint32(unix.NFT_DYNSET_OP_UPDATE), Timeout: AliveTimeout},
	}, drop())
}

// heartbeatTo is where heartbeats go: the discard port on loopback,
// which every router has up. The heartbeat chain drops them first.
var heartbeatTo = unix.SockaddrInet4{Port: 9, Addr: [4]byte{127, 0, 0, 1}}

// Heartbeat renews the alive element of the table in the caller's network
// namespace: it sends one TCP SYN marked AliveMark, which the table's
// heartbeat chain takes. No ruleset transaction, no conntrack entry.
func Heartbeat() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, AliveMark); err != nil {
		return fmt.Errorf("heartbeat: SO_MARK: %w", err)
	}
	// The SYN leaves inside connect; closing the socket then sends nothing.
	if err := unix.Connect(fd, &heartbeatTo); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return fmt.Errorf("heartbeat: %w", err)
	}
	return nil
}

// minMSS is IPv4's default MSS, below which no MSS is lowered; mssCeiling
// ends the steps of 8: every larger MSS (no real path has one) falls in
// one last range.
const (
	minMSS     = 536
	mssCeiling = 9216
)

// mssSet maps a client's MSS, in ranges of 8, to the lower bound less
// room, never below minMSS (nft cannot subtract): the room a helper's
// rewrites need, as the daemon leaves it (ipvs LowerMSS).
// (Typed as ports: 16-bit big-endian numbers nft prints.)
func mssSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: "mss", IsMap: true, Interval: true, Constant: true,
		KeyType: nftables.TypeInetService, DataType: nftables.TypeInetService, Comment: "tcp option maxseg size: lowered"}
}

func mssElements(room uint16) []nftables.SetElement {
	be := func(v int) []byte { return binary.BigEndian.AppendUint16(nil, uint16(v)) }
	var els []nftables.SetElement
	lo, val := minMSS+1, minMSS
	flush := func(hi int) {
		els = append(els, nftables.SetElement{Key: be(lo), Val: be(val)})
		if hi < 0xffff {
			els = append(els, nftables.SetElement{Key: be(hi + 1), IntervalEnd: true})
		} else {
			els[len(els)-1].IntervalOpen = true
		}
	}
	for step := minMSS + 8; step <= mssCeiling; step += 8 {
		v := max(step-int(room), minMSS)
		if v != val {
			flush(step - 1)
			lo, val = step, v
		}
	}
	flush(0xffff)
	return els
}

// lowerMSS sets a SYN's MSS option from the mss map (the kernel only
// ever lowers it); a SYN without one is left alone.
func lowerMSS(s *nftables.Set) []expr.Any {
	const kind, off, n = 2, 2, 2 // TCPOPT_MSS, its value
	return []expr.Any{
		&expr.Exthdr{Op: expr.ExthdrOpTcpopt, Type: kind, Offset: off, Len: n, DestRegister: unix.NFT_REG32_00},
		&expr.Lookup{SourceRegister: unix.NFT_REG32_00, DestRegister: unix.NFT_REG32_00, IsDestRegSet: true, SetName: s.Name, SetID: s.ID},
		&expr.Exthdr{Op: expr.ExthdrOpTcpopt, Type: kind, Offset: off, Len: n, SourceRegister: unix.NFT_REG32_00},
	}
}
