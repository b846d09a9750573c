package kernel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/nfq/seqnum"
)

func ftpHelper() Helper {
	return Helper{
		Name: "nfh-ftp", Family: unix.AF_INET, Proto: unix.IPPROTO_TCP, Queue: 200,
		PrivLen: StateLen, Enabled: true,
		Policies: []ExpectPolicy{{Name: "ftp", MaxExpected: 1, Timeout: 300}},
	}
}

func TestHelperRoundTrip(t *testing.T) {
	h := ftpHelper()
	b, err := h.encode(false)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseHelper(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, h) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, h)
	}
	// The kernel's required attributes, in network byte order.
	ad, _ := netlink.NewAttributeDecoder(b)
	seen := map[uint16][]byte{}
	for ad.Next() {
		seen[ad.Type()] = ad.Bytes()
	}
	for _, typ := range []uint16{cthName, cthTuple, cthQueueNum, cthPolicy, cthPrivDataLen, cthStatus} {
		if _, ok := seen[typ]; !ok {
			t.Errorf("attribute %d missing", typ)
		}
	}
	if !bytes.Equal(seen[cthName], []byte("nfh-ftp\x00")) {
		t.Errorf("name %q: want NUL-terminated", seen[cthName])
	}
	if v := binary.BigEndian.Uint32(seen[cthQueueNum]); v != 200 {
		t.Errorf("queue %d", v)
	}
	// The tuple's family is a big-endian u16.
	if !bytes.Contains(seen[cthTuple], []byte{6, 0, cthTupleL3, 0, 0, unix.AF_INET}) {
		t.Errorf("tuple %x", seen[cthTuple])
	}
	// An update leaves the data length out (the kernel refuses to change it).
	u, _ := h.encode(true)
	got, _ = parseHelper(u)
	if got.PrivLen != 0 {
		t.Errorf("update carries a data length")
	}
}

func TestHelperValidate(t *testing.T) {
	for name, mod := range map[string]func(*Helper){
		"long name":   func(h *Helper) { h.Name = "a-helper-name-too-long" },
		"no name":     func(h *Helper) { h.Name = "" },
		"family":      func(h *Helper) { h.Family = 7 },
		"priv len":    func(h *Helper) { h.PrivLen = PrivDataMax + 1 },
		"no policy":   func(h *Helper) { h.Policies = nil },
		"policy name": func(h *Helper) { h.Policies[0].Name = "" },
		"classes":     func(h *Helper) { h.Policies = make([]ExpectPolicy, 5) },
	} {
		h := ftpHelper()
		mod(&h)
		if _, err := h.encode(false); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// nfqaCT builds NFQA_CT contents as the kernel sends them.
func nfqaCT(t *testing.T, info []byte) []byte {
	ae := encoder()
	if err := encodeTupleAttr(ae, ctaTupleOrig, Tuple{netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("192.0.2.10:21"), unix.IPPROTO_TCP}); err != nil {
		t.Fatal(err)
	}
	if err := encodeTupleAttr(ae, ctaTupleReply, Tuple{netip.MustParseAddrPort("[2001:db8::2]:21"), netip.MustParseAddrPort("[2001:db8::1]:40000"), unix.IPPROTO_TCP}); err != nil {
		t.Fatal(err)
	}
	ae.Uint32(ctaStatus, StatusDstNAT|StatusSeqAdjust|StatusHelper)
	ae.Uint32(ctaMark, 7)
	ae.Uint32(ctaID, 0xdeadbeef)
	ae.Uint32(99, 1) // unknown: skipped
	for typ, a := range map[uint16]seqnum.Adj{ctaSeqAdjOrig: {Pos: 5, Before: 0, After: -4}, ctaSeqAdjRepl: {Pos: 0xfffffffe, Before: 3, After: 9}} {
		ae.Nested(typ, func(n *netlink.AttributeEncoder) error {
			n.Uint32(ctaSeqAdjPos, uint32(a.Pos))
			n.Uint32(ctaSeqAdjBefore, uint32(a.Before))
			n.Uint32(ctaSeqAdjAfter, uint32(a.After))
			return nil
		})
	}
	ae.Nested(ctaHelp, func(n *netlink.AttributeEncoder) error {
		n.String(ctaHelpName, "nfh-ftp")
		n.Bytes(ctaHelpInfo, info)
		return nil
	})
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseConntrack(t *testing.T) {
	st := HelperState{Flags: StateValid, Next: [2]uint32{1, 0xfffffff0}, Helper: 3, Server: 2}
	ct, err := ParseConntrack(nfqaCT(t, st.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	want := Conntrack{
		ID: 0xdeadbeef, Status: StatusDstNAT | StatusSeqAdjust | StatusHelper, Mark: 7, HasMark: true,
		Orig:   Tuple{netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("192.0.2.10:21"), unix.IPPROTO_TCP},
		Reply:  Tuple{netip.MustParseAddrPort("[2001:db8::2]:21"), netip.MustParseAddrPort("[2001:db8::1]:40000"), unix.IPPROTO_TCP},
		Helper: "nfh-ftp", HelperInfo: st.Encode(),
		SeqAdj: [2]seqnum.Adj{{Pos: 5, Before: 0, After: -4}, {Pos: 0xfffffffe, Before: 3, After: 9}}, HasSeqAdj: true,
	}
	if !reflect.DeepEqual(ct, want) {
		t.Errorf("got  %+v\nwant %+v", ct, want)
	}
	back, err := DecodeState(ct.HelperInfo)
	if err != nil || back != st {
		t.Errorf("state %+v, %v; want %+v", back, err, st)
	}
	if _, err := ParseConntrack([]byte{8, 0, 3}); err == nil {
		t.Error("truncated NFQA_CT parsed")
	}
}

func TestVerdictCT(t *testing.T) {
	info := HelperState{Flags: StateStopped}.Encode()
	b, err := VerdictCT("nfh-ftp", info)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := ParseConntrack(b)
	if err != nil || ct.Helper != "nfh-ftp" || !bytes.Equal(ct.HelperInfo, info) {
		t.Errorf("got %+v, %v", ct, err)
	}
	// The name goes NUL-terminated (the kernel's policy is NLA_NUL_STRING).
	if !bytes.Contains(b, []byte("nfh-ftp\x00")) {
		t.Errorf("%q", b)
	}
	if _, err := VerdictCT("", nil); err == nil {
		t.Error("empty helper name accepted")
	}
	if _, err := VerdictCT("x", make([]byte, PrivDataMax+1)); err == nil {
		t.Error("oversized helper data accepted")
	}
	m, _ := VerdictCTMark(0x42)
	if ct, err := ParseConntrack(m); err != nil || !ct.HasMark || ct.Mark != 0x42 {
		t.Errorf("mark: %+v %v", ct, err)
	}
}

func TestExpectation(t *testing.T) {
	e := Expectation{
		Master: Tuple{netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("192.0.2.10:21"), unix.IPPROTO_TCP},
		Tuple:  Tuple{netip.MustParseAddrPort("10.0.0.1:0"), netip.MustParseAddrPort("192.0.2.10:50000"), unix.IPPROTO_TCP},
		Dir:    DirOriginal, NAT: true,
		NATTo: Tuple{netip.MustParseAddrPort("172.16.0.2:30000"), netip.MustParseAddrPort("10.0.0.1:0"), unix.IPPROTO_TCP},
	}
	b, err := e.NFQAExp()
	if err != nil {
		t.Fatal(err)
	}
	ad, _ := decoder(b)
	types := map[uint16]bool{}
	var nat Tuple
	var dir uint32 = 99
	for ad.Next() {
		types[ad.Type()] = true
		switch ad.Type() {
		case ctaExpectMask:
			var m Tuple
			ad.Nested(func(n *netlink.AttributeDecoder) error { return parseTuple(n, &m) })
			if m.Src.Port() != 0 || m.Src.Addr() != netip.MustParseAddr("255.255.255.255") || m.Proto != unix.IPPROTO_TCP {
				t.Errorf("mask %+v", m)
			}
		case ctaExpectNAT:
			ad.Nested(func(n *netlink.AttributeDecoder) error {
				for n.Next() {
					switch n.Type() {
					case ctaExpectNATDir:
						dir = n.Uint32()
					case ctaExpectNATTuple:
						n.Nested(func(tn *netlink.AttributeDecoder) error { return parseTuple(tn, &nat) })
					}
				}
				return nil
			})
		case ctaExpectFn:
			if s := ad.String(); s != FollowMaster {
				t.Errorf("function %q", s)
			}
		}
	}
	if err := ad.Err(); err != nil {
		t.Fatal(err)
	}
	for _, typ := range []uint16{ctaExpectTuple, ctaExpectMask, ctaExpectNAT, ctaExpectFn} {
		if !types[typ] {
			t.Errorf("attribute %d missing", typ)
		}
	}
	if dir != DirOriginal || nat != e.NATTo {
		t.Errorf("NAT %d %+v", dir, nat)
	}
	x := e.Conntrack()
	if x.Function != "nat-follow-master\x00" || x.NAT.Direction || x.NAT.Tuple.Proto.SourcePort != 30000 || x.HelpName != "" {
		t.Errorf("ctnetlink expectation %+v", x)
	}
	e.Tuple.Dst = netip.MustParseAddrPort("[2001:db8::1]:1")
	if _, err := e.NFQAExp(); err == nil {
		t.Error("mixed families accepted")
	}
}

func TestState(t *testing.T) {
	s := HelperState{Flags: StateValid | StateLost, Next: [2]uint32{10, 20}, Helper: 0x5041535600000001, Server: 65535}
	b := s.Encode()
	if len(b) != StateLen || StateLen > PrivDataMax {
		t.Fatalf("%d bytes", len(b))
	}
	if got, err := DecodeState(b); err != nil || got != s {
		t.Errorf("%+v %v", got, err)
	}
	if got, err := DecodeState(make([]byte, StateLen)); err != nil || got != (HelperState{}) {
		t.Errorf("zeros: %+v %v", got, err)
	}
	b[0] = 9
	if _, err := DecodeState(b); !errors.Is(err, ErrStateVersion) {
		t.Errorf("version: %v", err)
	}
	if _, err := DecodeState(b[:3]); err == nil {
		t.Error("short state decoded")
	}
}

func TestChoose(t *testing.T) {
	all := Features{IPVS: ErrNoIPVS}
	thisMachine := Features{NativeQueue: ErrNoNativeQueue, QueueConntrack: ErrNoQueueConntrack, Cthelper: ErrNoCthelper, IPVS: ErrNoIPVS}
	for _, c := range []struct {
		f        Features
		override string
		auto     bool
		want     string
		err      error
	}{
		{all, "", true, DatapathKernel, nil},
		{all, "", false, DatapathCompat, nil},
		{Features{NativeQueue: ErrNoNativeQueue}, "", true, DatapathKernel, nil}, // xt NFQUEUE does
		{thisMachine, "", true, DatapathCompat, nil},
		{thisMachine, "compat", true, DatapathCompat, nil},
		{all, "compat", true, DatapathCompat, nil},
		{all, "kernel", false, DatapathKernel, nil},
		{thisMachine, "kernel", true, "", ErrDatapathUnavailable},
		{Features{Ctnetlink: ErrNoCtnetlink}, "kernel", true, "", ErrNoCtnetlink},
		{all, "fast", true, "", nil},
		// Neither queue statement: no datapath at all.
		{Features{NativeQueue: ErrNoNativeQueue, XtQueue: ErrNoXtQueue}, "", false, "", ErrNoQueue},
		{Features{NativeQueue: ErrNoNativeQueue, XtQueue: ErrNoXtQueue}, "compat", false, "", ErrNoXtQueue},
	} {
		got, err := Choose(c.f, c.override, c.auto)
		if got != c.want || (c.err != nil && !errors.Is(err, c.err)) || (c.want == "" && err == nil) || (c.want != "" && err != nil) {
			t.Errorf("Choose(%v, %q, %v) = %q, %v", c.f, c.override, c.auto, got, err)
		}
	}
	if thisMachine.QueueExpr() != QueueXt || all.QueueExpr() != QueueNative {
		t.Error("QueueExpr")
	}
}

func TestDeleteExpectRequest(t *testing.T) {
	for _, c := range []struct {
		client, vip string
		family      uint8
	}{
		{"10.0.0.1:0", "192.0.2.10:50000", unix.AF_INET},
		{"[2001:db8:2::2]:0", "[2001:db8:1::10]:40961", unix.AF_INET6},
	} {
		e := Expectation{Tuple: Tuple{netip.MustParseAddrPort(c.client), netip.MustParseAddrPort(c.vip), unix.IPPROTO_TCP}}
		m, err := deleteExpectRequest(e)
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Type != netlink.HeaderType(subsysCtnetlinkExp<<8|ctExpMsgDelete) || m.Header.Flags&netlink.Acknowledge == 0 {
			t.Errorf("%s: header %+v", c.vip, m.Header)
		}
		if len(m.Data) < 4 || m.Data[0] != c.family {
			t.Fatalf("%s: nfgenmsg % x", c.vip, m.Data)
		}
		ad, _ := decoder(m.Data[4:])
		var got Tuple
		n := 0
		for ad.Next() {
			n++
			if ad.Type() != ctaExpectTuple {
				t.Errorf("%s: attribute %d", c.vip, ad.Type())
				continue
			}
			ad.Nested(func(nd *netlink.AttributeDecoder) error { return parseTuple(nd, &got) })
		}
		if err := ad.Err(); err != nil {
			t.Fatal(err)
		}
		// The tuple alone: the kernel then deletes the expectation that
		// holds it, whichever connection announced it.
		if n != 1 || got != e.Tuple {
			t.Errorf("%s: %d attributes, tuple %+v", c.vip, n, got)
		}
	}
}
