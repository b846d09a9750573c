package nfq

import (
	"encoding/binary"
	"errors"
)

// The nfnetlink_queue wire format (linux/netfilter/nfnetlink_queue.h). Every
// message is a netlink header, the nfnetlink header (family, version, the
// queue number in network byte order) and attributes. Attribute values are
// in network byte order; the headers are in host byte order.

const (
	nlmsgHdrLen = 16
	nfgenHdrLen = 4
	nlaHdrLen   = 4

	nlmsgError = 2 // NLMSG_ERROR
	nlmsgDone  = 3 // NLMSG_DONE

	nlmFRequest = 0x1
	nlmFAck     = 0x4

	nlaFNested   = 0x8000
	nlaTypeMask  = 0x3fff
	subsysQueue  = 3 // NFNL_SUBSYS_QUEUE
	nfnetlinkV0  = 0
	msgPacket    = subsysQueue << 8   // | NFQNL_MSG_PACKET (0)
	msgVerdict   = subsysQueue<<8 | 1 // NFQNL_MSG_VERDICT
	msgConfig    = subsysQueue<<8 | 2 // NFQNL_MSG_CONFIG
	msgVerdictBa = subsysQueue<<8 | 3 // NFQNL_MSG_VERDICT_BATCH
)

// Packet and verdict attributes (enum nfqnl_attr_type).
const (
	attrPacketHdr  = 1
	attrVerdictHdr = 2
	attrMark       = 3
	attrTimestamp  = 4
	attrInDev      = 5
	attrOutDev     = 6
	attrPhysInDev  = 7
	attrPhysOutDev = 8
	attrHWAddr     = 9
	attrPayload    = 10
	attrCT         = 11
	attrCTInfo     = 12
	attrCapLen     = 13
	attrSkbInfo    = 14
	attrExp        = 15
)

// Config attributes (enum nfqnl_attr_config) and commands.
const (
	cfgAttrCmd    = 1
	cfgAttrParams = 2
	cfgAttrMaxLen = 3
	cfgAttrMask   = 4
	cfgAttrFlags  = 5

	cfgCmdBind     = 1
	cfgCmdUnbind   = 2
	cfgCmdPFBind   = 3
	cfgCmdPFUnbind = 4

	copyPacket = 2 // NFQNL_COPY_PACKET
)

// Queue flags (NFQA_CFG_F_*).
const (
	FlagFailOpen  uint32 = 1 // accept instead of drop when the queue is full
	FlagConntrack uint32 = 2 // NFQA_CT and NFQA_CT_INFO in packet messages
	FlagGSO       uint32 = 4 // GSO packets are queued unsegmented
)

// Verdicts (NF_DROP, NF_ACCEPT, NF_REPEAT).
const (
	VerdictDrop   uint32 = 0
	VerdictAccept uint32 = 1
	VerdictRepeat uint32 = 4
)

// MaxPayload is the largest altered packet a verdict can carry: a netlink
// attribute's length is 16 bits and includes its header.
const MaxPayload = 0xffff - nlaHdrLen

// Errors of message parsing.
var (
	ErrShortMessage = errors.New("nfqueue: truncated or malformed netlink message")
	ErrNotPacket    = errors.New("nfqueue: not a queued-packet message")
	ErrNoPacketHdr  = errors.New("nfqueue: packet message without NFQA_PACKET_HDR")
)

func align4(n int) int { return (n + 3) &^ 3 }

// Message is one queued packet as the kernel describes it. Its slices point
// into the receive buffer: they are valid only while the handler runs.
type Message struct {
	ID      uint32 // for the verdict
	HWProto uint16 // ethertype (0x0800, 0x86dd)
	Hook    uint8  // netfilter hook the packet was queued from
	Mark    uint32
	Payload []byte // from the IP header on
	// CapLen is the packet's full length when Payload was cut short
	// (NFQA_CAP_LEN), else 0.
	CapLen uint32
	// CT is the contents of the nested NFQA_CT attribute (ctnetlink CTA_*
	// attributes) and CTInfo the connection state (NFQA_CT_INFO, enum
	// ip_conntrack_info), when the queue was opened with FlagConntrack and
	// the packet has a connection.
	CT        []byte
	CTInfo    uint32
	HasCTInfo bool
	// Interface indexes, 0 when absent.
	InDev, OutDev, PhysInDev, PhysOutDev uint32
	SkbInfo                              uint32 // NFQA_SKB_INFO: NFQA_SKB_CSUMNOTREADY (1), GSO (2), CSUM_NOTVERIFIED (4)
}

// nlHeader reads the netlink message at the start of b: its type, flags and
// the message itself (aligned length consumed in adv).
func nlHeader(b []byte) (typ, flags uint16, msg []byte, adv int, err error) {
	if len(b) < nlmsgHdrLen {
		return 0, 0, nil, 0, ErrShortMessage
	}
	l := int(binary.NativeEndian.Uint32(b))
	if l < nlmsgHdrLen || l > len(b) {
		return 0, 0, nil, 0, ErrShortMessage
	}
	adv = min(align4(l), len(b))
	return binary.NativeEndian.Uint16(b[4:]), binary.NativeEndian.Uint16(b[6:]), b[:l], adv, nil
}

// nextAttr splits the first attribute off b. ok is false at the end or on
// a malformed attribute.
func nextAttr(b []byte) (typ uint16, val, rest []byte, ok bool) {
	if len(b) < nlaHdrLen {
		return 0, nil, nil, false
	}
	l := int(binary.NativeEndian.Uint16(b))
	if l < nlaHdrLen || l > len(b) {
		return 0, nil, nil, false
	}
	typ = binary.NativeEndian.Uint16(b[2:]) & nlaTypeMask
	val = b[nlaHdrLen:l:l]
	return typ, val, b[min(align4(l), len(b)):], true
}

// ParseQueueMessage reads one netlink message of a queued packet (from its
// netlink header on) into m. It never keeps b beyond m's slices.
func ParseQueueMessage(b []byte, m *Message) error {
	typ, _, msg, _, err := nlHeader(b)
	if err != nil {
		return err
	}
	if typ != msgPacket {
		return ErrNotPacket
	}
	if len(msg) < nlmsgHdrLen+nfgenHdrLen {
		return ErrShortMessage
	}
	*m = Message{}
	seenHdr := false
	attrs := msg[nlmsgHdrLen+nfgenHdrLen:]
	for len(attrs) > 0 {
		t, v, rest, ok := nextAttr(attrs)
		if !ok {
			return ErrShortMessage
		}
		attrs = rest
		switch t {
		case attrPacketHdr:
			if len(v) < 7 {
				return ErrShortMessage
			}
			m.ID = binary.BigEndian.Uint32(v)
			m.HWProto = binary.BigEndian.Uint16(v[4:])
			m.Hook = v[6]
			seenHdr = true
		case attrMark:
			m.Mark = be32(v)
		case attrPayload:
			m.Payload = v
		case attrCapLen:
			m.CapLen = be32(v)
		case attrCT:
			m.CT = v
		case attrCTInfo:
			m.CTInfo, m.HasCTInfo = be32(v), len(v) >= 4
		case attrInDev:
			m.InDev = be32(v)
		case attrOutDev:
			m.OutDev = be32(v)
		case attrPhysInDev:
			m.PhysInDev = be32(v)
		case attrPhysOutDev:
			m.PhysOutDev = be32(v)
		case attrSkbInfo:
			m.SkbInfo = be32(v)
		}
	}
	if !seenHdr {
		return ErrNoPacketHdr
	}
	return nil
}

// be32 reads a 32-bit attribute value; 0 if it is too short.
func be32(v []byte) uint32 {
	if len(v) < 4 {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}

// parseError reads an NLMSG_ERROR message: the errno (positive; 0 for an
// acknowledgement) and the sequence number of the request it answers.
func parseError(msg []byte) (errno int32, seq uint32, err error) {
	if len(msg) < nlmsgHdrLen+4+nlmsgHdrLen {
		if len(msg) < nlmsgHdrLen+4 {
			return 0, 0, ErrShortMessage
		}
		return -int32(binary.NativeEndian.Uint32(msg[nlmsgHdrLen:])), 0, nil
	}
	code := int32(binary.NativeEndian.Uint32(msg[nlmsgHdrLen:]))
	return -code, binary.NativeEndian.Uint32(msg[nlmsgHdrLen+4+8:]), nil
}

// appendHeader starts a message of type typ for queue num; finishMessage
// fills in its length once the attributes are appended.
func appendHeader(b []byte, typ, flags uint16, seq uint32, family uint8, num uint16) []byte {
	var h [nlmsgHdrLen + nfgenHdrLen]byte
	binary.NativeEndian.PutUint16(h[4:], typ)
	binary.NativeEndian.PutUint16(h[6:], flags)
	binary.NativeEndian.PutUint32(h[8:], seq)
	h[16] = family
	h[17] = nfnetlinkV0
	binary.BigEndian.PutUint16(h[18:], num)
	return append(b, h[:]...)
}

func finishMessage(b []byte, start int) []byte {
	binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b
}

// appendAttr appends one attribute with value v, padded to 4 bytes.
func appendAttr(b []byte, typ uint16, v []byte) []byte {
	var h [nlaHdrLen]byte
	binary.NativeEndian.PutUint16(h[:], uint16(nlaHdrLen+len(v)))
	binary.NativeEndian.PutUint16(h[2:], typ)
	b = append(b, h[:]...)
	b = append(b, v...)
	for range align4(len(v)) - len(v) {
		b = append(b, 0)
	}
	return b
}

func appendAttr32(b []byte, typ uint16, v uint32) []byte {
	var x [4]byte
	binary.BigEndian.PutUint32(x[:], v)
	return appendAttr(b, typ, x[:])
}

// Verdict is the answer for one queued packet.
type Verdict struct {
	ID      uint32
	Verdict uint32 // VerdictAccept, VerdictDrop, VerdictRepeat
	SetMark bool
	Mark    uint32
	// Payload replaces the packet (IP header on, checksums the caller's);
	// nil keeps it. At most MaxPayload bytes.
	Payload []byte
	// CT and Exp are the contents (ctnetlink CTA_* and CTA_EXPECT_*
	// attributes, already encoded) of a nested NFQA_CT and NFQA_EXP
	// attribute; nil sends none. On kernels with
	// CONFIG_NETFILTER_NETLINK_GLUE_CT, NFQA_CT together with a Payload of
	// another length makes the kernel record the change in the connection's
	// seqadj.
	CT, Exp []byte
}

// plain reports whether v is an accept with nothing else, the kind a batch
// verdict can answer.
func (v *Verdict) plain() bool {
	return v.Verdict == VerdictAccept && !v.SetMark && v.Payload == nil && v.CT == nil && v.Exp == nil
}

// size is the encoded length of v's message.
func (v *Verdict) size() int {
	n := nlmsgHdrLen + nfgenHdrLen + nlaHdrLen + 8
	if v.SetMark {
		n += nlaHdrLen + 4
	}
	if v.Payload != nil {
		n += nlaHdrLen + align4(len(v.Payload))
	}
	if v.CT != nil {
		n += nlaHdrLen + align4(len(v.CT))
	}
	if v.Exp != nil {
		n += nlaHdrLen + align4(len(v.Exp))
	}
	return n
}

// ErrAttrTooLong: an attribute of a verdict does not fit netlink's 16-bit
// attribute length.
var ErrAttrTooLong = errors.New("nfqueue: verdict attribute longer than 65531 bytes")

// AppendVerdict appends the NFQNL_MSG_VERDICT message for v on queue num.
func AppendVerdict(b []byte, num uint16, seq uint32, v *Verdict) ([]byte, error) {
	if len(v.Payload) > MaxPayload || len(v.CT) > MaxPayload || len(v.Exp) > MaxPayload {
		return b, ErrAttrTooLong
	}
	start := len(b)
	b = appendHeader(b, msgVerdict, nlmFRequest, seq, 0, num)
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[:], v.Verdict)
	binary.BigEndian.PutUint32(hdr[4:], v.ID)
	b = appendAttr(b, attrVerdictHdr, hdr[:])
	if v.SetMark {
		b = appendAttr32(b, attrMark, v.Mark)
	}
	if v.Payload != nil {
		b = appendAttr(b, attrPayload, v.Payload)
	}
	if v.CT != nil {
		b = appendAttr(b, attrCT|nlaFNested, v.CT)
	}
	if v.Exp != nil {
		b = appendAttr(b, attrExp|nlaFNested, v.Exp)
	}
	return finishMessage(b, start), nil
}

// AppendVerdictBatch appends an NFQNL_MSG_VERDICT_BATCH message: the kernel
// gives verdict to every packet of queue num up to and including id.
func AppendVerdictBatch(b []byte, num uint16, seq uint32, id, verdict uint32) []byte {
	start := len(b)
	b = appendHeader(b, msgVerdictBa, nlmFRequest, seq, 0, num)
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[:], verdict)
	binary.BigEndian.PutUint32(hdr[4:], id)
	b = appendAttr(b, attrVerdictHdr, hdr[:])
	return finishMessage(b, start)
}

// appendConfigCmd appends a config message carrying command cmd (for the
// protocol family pf), acknowledged.
func appendConfigCmd(b []byte, num uint16, seq uint32, cmd uint8, pf uint16) []byte {
	start := len(b)
	b = appendHeader(b, msgConfig, nlmFRequest|nlmFAck, seq, 0, num)
	var c [4]byte
	c[0] = cmd
	binary.BigEndian.PutUint16(c[2:], pf)
	b = appendAttr(b, cfgAttrCmd, c[:])
	return finishMessage(b, start)
}

// appendBind appends the message that binds queue num and configures it in
// one go: whole packets up to copyRange bytes, at most maxLen waiting, and
// flags. The kernel checks the flags before it binds.
func appendBind(b []byte, num uint16, seq uint32, copyRange, maxLen, flags, mask uint32) []byte {
	start := len(b)
	b = appendHeader(b, msgConfig, nlmFRequest|nlmFAck, seq, 0, num)
	b = appendAttr(b, cfgAttrCmd, []byte{cfgCmdBind, 0, 0, 0})
	var params [5]byte
	binary.BigEndian.PutUint32(params[:], copyRange)
	params[4] = copyPacket
	b = appendAttr(b, cfgAttrParams, params[:])
	if maxLen > 0 {
		b = appendAttr32(b, cfgAttrMaxLen, maxLen)
	}
	if mask != 0 {
		b = appendAttr32(b, cfgAttrMask, mask)
		b = appendAttr32(b, cfgAttrFlags, flags)
	}
	return finishMessage(b, start)
}
