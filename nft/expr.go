package nft

import (
	"encoding/binary"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/kernel"
)

// reg1 is the first 16-byte register; concatenations address the same storage
// in 32-bit words from NFT_REG32_00 on, each field padded to 4 bytes.
const reg1 = 1

// field is one loaded value of a concatenation and its length in bytes.
type field struct {
	load func(reg uint32) expr.Any
	len  uint32
}

// concat loads fields into consecutive 32-bit registers from NFT_REG32_00 on,
// each padded to 4 bytes, as nft does for concatenations.
func concat(fields ...field) []expr.Any { return concatAt(unix.NFT_REG32_00, fields...) }

// concatAt loads fields like concat, from register reg on.
func concatAt(reg uint32, fields ...field) []expr.Any {
	var out []expr.Any
	for _, f := range fields {
		out = append(out, f.load(reg))
		reg += words(f.len)
	}
	return out
}

func words(n uint32) uint32 { return (n + 3) / 4 }

func nfproto(family byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{family}},
	}
}

func l4protoTCP() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_TCP}},
	}
}

func l4protoUDP() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_UDP}},
	}
}

// addrField loads the source or destination address of the network header.
func addrField(v6, src bool) field {
	off, n := uint32(16), uint32(4)
	if src {
		off = 12
	}
	if v6 {
		off, n = 24, 16
		if src {
			off = 8
		}
	}
	return field{len: n, load: func(reg uint32) expr.Any {
		return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}
	}}
}

// portField loads a TCP or UDP port (both at the same offsets).
func portField(src bool) field {
	off := uint32(2)
	if src {
		off = 0
	}
	return field{len: 2, load: func(reg uint32) expr.Any {
		return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2}
	}}
}

// bucketField is a number from 0 to fallbackBuckets-1, a new one for each
// packet (numgen inc).
func bucketField() field {
	return field{len: 4, load: func(reg uint32) expr.Any {
		return &expr.Numgen{Register: reg, Modulus: fallbackBuckets, Type: unix.NFT_NG_INCREMENTAL}
	}}
}

// ctOrigDst loads the original-direction destination address of the connection.
func ctOrigDst(v6 bool) field {
	key, n := expr.CtKeyDSTIP, uint32(4)
	if v6 {
		key, n = expr.CtKeyDSTIP6, 16
	}
	return field{len: n, load: func(reg uint32) expr.Any {
		return &expr.Ct{Register: reg, Key: key, Direction: 0}
	}}
}

func ctOrigDstPort() field {
	return field{len: 2, load: func(reg uint32) expr.Any {
		return &expr.Ct{Register: reg, Key: expr.CtKeyPROTODST, Direction: 0}
	}}
}

func ctOrigSrcPort() field {
	return field{len: 2, load: func(reg uint32) expr.Any {
		return &expr.Ct{Register: reg, Key: expr.CtKeyPROTOSRC, Direction: 0}
	}}
}

// tcpFlagsEq matches (tcp flags & mask) == want.
func tcpFlagsEq(mask, want byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 1, Mask: []byte{mask}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{want}},
	}
}

// pureAckFlags are the TCP flags of f.pureAck's keys (ACK) under
// pureAckMask (data offset, FIN, SYN, RST and ACK).
const (
	pureAckMask  = 0xf017
	pureAckFlags = 0x0010
)

// pureAck matches a TCP segment without payload, with ACK set and SYN, FIN
// and RST clear: its data offset and flags, and the IP length, which must
// be the headers' alone, are looked up in f.pureAck (nft cannot add).
func pureAck(f *family) []expr.Any {
	lenOff := uint32(2) // IPv4 total length
	if f.v6 {
		lenOff = 4 // IPv6 payload length
	}
	return []expr.Any{
		&expr.Payload{DestRegister: unix.NFT_REG32_00, Base: expr.PayloadBaseTransportHeader, Offset: 12, Len: 2},
		&expr.Bitwise{SourceRegister: unix.NFT_REG32_00, DestRegister: unix.NFT_REG32_00, Len: 2,
			Mask: binary.BigEndian.AppendUint16(nil, pureAckMask), Xor: []byte{0, 0}},
		&expr.Payload{DestRegister: unix.NFT_REG32_01, Base: expr.PayloadBaseNetworkHeader, Offset: lenOff, Len: 2},
		&expr.Lookup{SourceRegister: unix.NFT_REG32_00, SetName: f.pureAck.Name, SetID: f.pureAck.ID},
	}
}

// ctStateIs matches ct state against a bit set (NF_CT_STATE_BIT values).
func ctStateIs(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: native32(bits), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: native32(0)},
	}
}

func ctDirectionOriginal() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeyDIRECTION},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{0}},
	}
}

func ctDirectionReply() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeyDIRECTION},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{1}},
	}
}

// ctOrigSrc loads the original-direction source address of the connection.
func ctOrigSrc(v6 bool) field {
	key, n := expr.CtKeySRCIP, uint32(4)
	if v6 {
		key, n = expr.CtKeySRCIP6, 16
	}
	return field{len: n, load: func(reg uint32) expr.Any {
		return &expr.Ct{Register: reg, Key: key, Direction: 0}
	}}
}

// replyIs matches a TCP segment whose payload starts with code and a space
// (an FTP reply's last or only line).
func replyIs(code string) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBase(unix.NFT_PAYLOAD_INNER_HEADER), Offset: 0, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte(code + " ")},
	}
}

// dportUnprivileged matches a TCP or UDP destination port of 1024 or more.
func dportUnprivileged() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpGte, Register: reg1, Data: []byte{0x04, 0x00}},
	}
}

// queueExpr queues to the spec's queues with the bypass flag (with no
// reader bound, packets are accepted instead of dropped: fail open): the
// nft queue expression where the kernel has it and the spec asks for it,
// else the xtables target.
func queueExpr(spec *Spec) expr.Any {
	if spec.NativeQueue {
		// More than one queue: balanced by a hash of the addresses, as
		// the xtables target does.
		return &expr.Queue{Num: spec.QueueNum, Total: spec.QueueTotal, Flag: expr.QueueFlagBypass}
	}
	return kernel.XtQueue(spec.QueueNum, spec.QueueTotal)
}

// ctHelperObj is the table's ct helper object for the helper name (the
// object's name too) of transport protocol l4proto (unix.IPPROTO_TCP,
// unix.IPPROTO_UDP), both address families (inet). The kernel assigns it
// only to connections of that protocol.
func ctHelperObj(t *nftables.Table, name string, l4proto uint8) *nftables.NamedObj {
	return &nftables.NamedObj{Table: t, Name: name, Type: nftables.ObjTypeCtHelper,
		Obj: &expr.CtHelper{Name: name, L4Proto: l4proto}} // l3proto: the table's (inet)
}

// KernelFTPHelper is the kernel's own FTP helper, and the name of the
// table's ct helper object for it.
const KernelFTPHelper = kernel.KernelFTPHelper

// KernelTFTPHelper is the kernel's own TFTP helper (UDP), and the name of
// the table's ct helper object for it.
const KernelTFTPHelper = kernel.KernelTFTPHelper

// ctHelperSet assigns the ct helper object name to the packet's new
// connection: it must run after conntrack and before NAT.
func ctHelperSet(name string) []expr.Any {
	return []expr.Any{&expr.Objref{Type: unix.NFT_OBJECT_CT_HELPER, Name: name}}
}

// jump runs chain ch and comes back to the next rule; an accept there
// accepts for the hook.
func jump(ch *nftables.Chain) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: ch.Name}}
}

// goTo runs chain ch and does not come back: where it ends, so does the
// chain that jumped to the one with this rule (a base chain: its policy).
func goTo(ch *nftables.Chain) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictGoto, Chain: ch.Name}}
}

// replyLike matches a segment whose payload starts like the FTP replies
// replyIs looks for (227, 229 and 200 all start with 2).
func replyLike() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBase(unix.NFT_PAYLOAD_INNER_HEADER), Offset: 0, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{'2'}},
	}
}

func native32(v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b
}
