package nft

import (
	"encoding/binary"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// refuseChain holds the rules that refuse at once a new connection to a
// VIP that nothing balanced: no server and no sorry server for the daemon,
// or the daemon down and the fail-open map empty. Such a packet is still
// addressed to VIP.port when it reaches the input hook (a local VIP) or
// the forward hook (a routed one), since every DNAT, by the daemon's mark,
// the fail-open map or a data channel, happened in prerouting: a TCP one
// gets a reset, a UDP one ICMP port unreachable, not silence and a
// client's timeout.
//
// Only new connections (an ongoing one never is addressed to VIP.port
// after prerouting) and not over loopback: the router's own traffic to
// a VIP goes on as before. Data connections are addressed to other ports
// of the VIP (or DNATed) and never match VIP.port of a service. In the
// forward hook, the jump comes first in forward_new: its other rules take
// add-on SYNs after the user's DNAT, never addressed to a VIP.
const refuseChain = "refuse"

// refuseChains add the refuse chain and the input hook's chain that jumps
// to it (forwardRules jump from forward_new).
func refuseChains(a ruleAdder, fams [2]*family) {
	refuse := a.regular(refuseChain)
	for _, f := range fams {
		dst := concat(addrField(f.v6, false), portField(false))
		a.rule(refuse, nfproto(f.proto), l4protoTCP(), dst, lookup(f.vips), rejectTCPReset())
		a.rule(refuse, nfproto(f.proto), l4protoUDP(), dst, lookup(f.vipsUDP), rejectPortUnreachable())
		// Kernel-scheduled services, by protocol . VIP . port.
		kdst := append(concat(field{len: 1, load: l4protoLoad}, addrField(f.v6, false), portField(false)), lookup(f.kvips)...)
		a.rule(refuse, nfproto(f.proto), l4protoTCP(), kdst, rejectTCPReset())
		a.rule(refuse, nfproto(f.proto), l4protoUDP(), kdst, rejectPortUnreachable())
	}
	in := a.chain("refuse_input", nftables.ChainTypeFilter, nftables.ChainHookInput, *nftables.ChainPriorityFilter)
	a.rule(in, ctStateIs(newBit), notLoopback(), jump(refuse))
}

// notLoopback matches a packet that did not come in on a loopback device.
func notLoopback() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFTYPE, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: binary.NativeEndian.AppendUint16(nil, unix.ARPHRD_LOOPBACK)},
	}
}

func rejectTCPReset() []expr.Any {
	return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}
}

// rejectPortUnreachable answers ICMP or ICMPv6 port unreachable (the inet
// table's icmpx code).
func rejectPortUnreachable() []expr.Any {
	return []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}}
}
