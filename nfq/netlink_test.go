package nfq

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// testPacket is what appendPacketMessage encodes.
type testPacket struct {
	num       uint16
	id        uint32
	mark      uint32
	payload   []byte
	ct        []byte
	ctInfo    uint32
	inDev     uint32
	withCT    bool
	withMark  bool
	withInDev bool
}

// appendPacketMessage encodes a queued-packet message as the kernel sends it.
func appendPacketMessage(b []byte, p testPacket) []byte {
	start := len(b)
	b = appendHeader(b, msgPacket, 0, 0, 2, p.num)
	hdr := make([]byte, 7)
	binary.BigEndian.PutUint32(hdr, p.id)
	binary.BigEndian.PutUint16(hdr[4:], 0x0800)
	hdr[6] = 3 // NF_INET_LOCAL_OUT
	b = appendAttr(b, attrPacketHdr, hdr)
	if p.withMark {
		b = appendAttr32(b, attrMark, p.mark)
	}
	if p.withInDev {
		b = appendAttr32(b, attrInDev, p.inDev)
	}
	if p.withCT {
		b = appendAttr(b, attrCT|nlaFNested, p.ct)
		b = appendAttr32(b, attrCTInfo, p.ctInfo)
	}
	b = appendAttr(b, attrPayload, p.payload)
	return finishMessage(b, start)
}

// decodedVerdict is one verdict message as the kernel would read it.
type decodedVerdict struct {
	typ                uint16
	num                uint16
	verdict, id        uint32
	mark               uint32
	hasMark            bool
	payload, ct, exp   []byte
	ctNested, expNestd bool
}

// decodeVerdicts splits a datagram of verdict messages.
func decodeVerdicts(t testing.TB, d []byte) []decodedVerdict {
	t.Helper()
	var out []decodedVerdict
	for len(d) > 0 {
		typ, flags, msg, adv, err := nlHeader(d)
		if err != nil {
			t.Fatalf("verdict datagram: %v", err)
		}
		if flags&nlmFRequest == 0 {
			t.Fatalf("verdict without NLM_F_REQUEST")
		}
		d = d[adv:]
		v := decodedVerdict{typ: typ, num: binary.BigEndian.Uint16(msg[18:])}
		attrs := msg[nlmsgHdrLen+nfgenHdrLen:]
		for len(attrs) > 0 {
			raw := binary.NativeEndian.Uint16(attrs[2:])
			at, val, rest, ok := nextAttr(attrs)
			if !ok {
				t.Fatalf("malformed attribute in %x", msg)
			}
			attrs = rest
			switch at {
			case attrVerdictHdr:
				v.verdict, v.id = binary.BigEndian.Uint32(val), binary.BigEndian.Uint32(val[4:])
			case attrMark:
				v.mark, v.hasMark = binary.BigEndian.Uint32(val), true
			case attrPayload:
				v.payload = val
			case attrCT:
				v.ct, v.ctNested = val, raw&nlaFNested != 0
			case attrExp:
				v.exp, v.expNestd = val, raw&nlaFNested != 0
			}
		}
		out = append(out, v)
	}
	return out
}

func TestParseQueueMessage(t *testing.T) {
	ct := appendAttr32(nil, 3, 42) // a CTA_ID-like nested attribute
	msg := appendPacketMessage(nil, testPacket{num: 100, id: 0x01020304, mark: 0x00ff0000, payload: []byte("abcde"),
		ct: ct, ctInfo: 2, inDev: 7, withCT: true, withMark: true, withInDev: true})
	var m Message
	if err := ParseQueueMessage(msg, &m); err != nil {
		t.Fatal(err)
	}
	if m.ID != 0x01020304 || m.HWProto != 0x0800 || m.Hook != 3 || m.Mark != 0x00ff0000 || string(m.Payload) != "abcde" ||
		!bytes.Equal(m.CT, ct) || m.CTInfo != 2 || !m.HasCTInfo || m.InDev != 7 || m.OutDev != 0 {
		t.Fatalf("parsed %+v", m)
	}
	// A message without the optional attributes leaves them zero.
	msg = appendPacketMessage(nil, testPacket{id: 9, payload: []byte{1}})
	m.CT = []byte{1}
	if err := ParseQueueMessage(msg, &m); err != nil || m.ID != 9 || m.Mark != 0 || m.CT != nil || m.HasCTInfo {
		t.Fatalf("parsed %+v, %v", m, err)
	}
}

func TestParseQueueMessageErrors(t *testing.T) {
	good := appendPacketMessage(nil, testPacket{id: 1, payload: []byte("payload bytes"), withMark: true, withCT: true, ct: []byte{4, 0, 1, 0}})
	var m Message
	// Every cut, declared length kept or fixed up: an error, never a panic.
	for n := range len(good) {
		cut := bytes.Clone(good[:n])
		if err := ParseQueueMessage(cut, &m); err == nil {
			t.Errorf("cut at %d parsed", n)
		}
		if n >= 4 {
			binary.NativeEndian.PutUint32(cut, uint32(n))
			ParseQueueMessage(cut, &m)
		}
	}
	if err := ParseQueueMessage(appendConfigCmd(nil, 1, 1, cfgCmdBind, 0), &m); !errors.Is(err, ErrNotPacket) {
		t.Errorf("config message: %v", err)
	}
	noHdr := appendHeader(nil, msgPacket, 0, 0, 2, 1)
	noHdr = finishMessage(appendAttr32(noHdr, attrMark, 1), 0)
	if err := ParseQueueMessage(noHdr, &m); !errors.Is(err, ErrNoPacketHdr) {
		t.Errorf("no packet header: %v", err)
	}
	// An attribute claiming more than the message holds.
	bad := bytes.Clone(good)
	binary.NativeEndian.PutUint16(bad[nlmsgHdrLen+nfgenHdrLen:], 0xfff0)
	if err := ParseQueueMessage(bad, &m); !errors.Is(err, ErrShortMessage) {
		t.Errorf("long attribute: %v", err)
	}
}

func TestAppendVerdict(t *testing.T) {
	v := Verdict{ID: 77, Verdict: VerdictAccept, SetMark: true, Mark: 0x10000, Payload: []byte("12345"),
		CT: []byte{8, 0, 3, 0, 0, 0, 0, 1}, Exp: []byte{4, 0, 1, 0}}
	b, err := AppendVerdict([]byte("prefix"), 100, 5, &v)
	if err != nil {
		t.Fatal(err)
	}
	if string(b[:6]) != "prefix" || len(b)-6 != v.size() || (len(b)-6)%4 != 0 {
		t.Fatalf("length %d, size %d", len(b)-6, v.size())
	}
	msg := b[6:]
	if typ := binary.NativeEndian.Uint16(msg[4:]); typ != 0x0301 {
		t.Errorf("type %#x", typ)
	}
	if seq := binary.NativeEndian.Uint32(msg[8:]); seq != 5 {
		t.Errorf("seq %d", seq)
	}
	if msg[16] != 0 || msg[17] != 0 || binary.BigEndian.Uint16(msg[18:]) != 100 {
		t.Errorf("nfgenmsg % x", msg[16:20])
	}
	got := decodeVerdicts(t, msg)
	want := decodedVerdict{typ: msgVerdict, num: 100, verdict: 1, id: 77, mark: 0x10000, hasMark: true,
		payload: v.Payload, ct: v.CT, exp: v.Exp, ctNested: true, expNestd: true}
	if len(got) != 1 || !equalVerdict(got[0], want) {
		t.Fatalf("decoded %+v", got)
	}
	// The payload's padding is zero.
	if !bytes.Equal(msg[len(msg)-len(v.Exp)-nlaHdrLen-len(v.CT)-nlaHdrLen-3:][:3], []byte{0, 0, 0}) {
		t.Errorf("padding % x", msg)
	}

	plain := Verdict{ID: 1, Verdict: VerdictDrop}
	b, _ = AppendVerdict(nil, 3, 0, &plain)
	if len(b) != 32 {
		t.Errorf("plain verdict: %d bytes", len(b))
	}
	if _, err := AppendVerdict(nil, 3, 0, &Verdict{Payload: make([]byte, MaxPayload+1)}); !errors.Is(err, ErrAttrTooLong) {
		t.Errorf("oversized payload: %v", err)
	}
	if _, err := AppendVerdict(nil, 3, 0, &Verdict{Payload: make([]byte, MaxPayload)}); err != nil {
		t.Errorf("largest payload: %v", err)
	}

	b = AppendVerdictBatch(nil, 9, 0, 1234, VerdictAccept)
	got = decodeVerdicts(t, b)
	if len(got) != 1 || got[0].typ != msgVerdictBa || got[0].id != 1234 || got[0].verdict != 1 || got[0].num != 9 {
		t.Errorf("batch verdict %+v", got)
	}
}

func equalVerdict(a, b decodedVerdict) bool {
	return a.typ == b.typ && a.num == b.num && a.verdict == b.verdict && a.id == b.id && a.mark == b.mark &&
		a.hasMark == b.hasMark && bytes.Equal(a.payload, b.payload) && bytes.Equal(a.ct, b.ct) && bytes.Equal(a.exp, b.exp) &&
		a.ctNested == b.ctNested && a.expNestd == b.expNestd
}

func TestAppendBind(t *testing.T) {
	b := appendBind(nil, 100, 3, 0xffff, 4096, FlagFailOpen|FlagConntrack, FlagFailOpen|FlagConntrack|FlagGSO)
	typ, flags, msg, _, err := nlHeader(b)
	if err != nil || typ != msgConfig || flags != nlmFRequest|nlmFAck {
		t.Fatalf("%#x %#x %v", typ, flags, err)
	}
	seen := map[uint16][]byte{}
	for a := msg[nlmsgHdrLen+nfgenHdrLen:]; len(a) > 0; {
		at, v, rest, ok := nextAttr(a)
		if !ok {
			t.Fatal("malformed")
		}
		seen[at], a = v, rest
	}
	if c := seen[cfgAttrCmd]; len(c) != 4 || c[0] != cfgCmdBind {
		t.Errorf("cmd % x", c)
	}
	if p := seen[cfgAttrParams]; len(p) != 5 || binary.BigEndian.Uint32(p) != 0xffff || p[4] != copyPacket {
		t.Errorf("params % x", p)
	}
	if be32(seen[cfgAttrMaxLen]) != 4096 || be32(seen[cfgAttrFlags]) != 3 || be32(seen[cfgAttrMask]) != 7 {
		t.Errorf("maxlen/flags/mask %v", seen)
	}
}

func TestParseError(t *testing.T) {
	// NLMSG_ERROR: header, errno (negative), the request's header.
	b := make([]byte, nlmsgHdrLen+4+nlmsgHdrLen)
	binary.NativeEndian.PutUint32(b, uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], nlmsgError)
	binary.NativeEndian.PutUint32(b[16:], uint32(0xffffffff)) // -EPERM
	binary.NativeEndian.PutUint32(b[20+8:], 3)
	errno, seq, err := parseError(b)
	if err != nil || errno != 1 || seq != 3 {
		t.Fatalf("%d %d %v", errno, seq, err)
	}
	if _, _, err := parseError(b[:18]); err == nil {
		t.Error("short error parsed")
	}
}
