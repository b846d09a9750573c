package kernel

import (
	"fmt"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// Expectation attributes (CTA_EXPECT_*).
const (
	ctaExpectMaster  = 1
	ctaExpectTuple   = 2
	ctaExpectMask    = 3
	ctaExpectTimeout = 4
	ctaExpectClass   = 9
	ctaExpectNAT     = 10
	ctaExpectFn      = 11

	ctaExpectNATDir   = 1
	ctaExpectNATTuple = 2

	subsysCtnetlinkExp = 2 // NFNL_SUBSYS_CTNETLINK_EXP
	ctExpMsgDelete     = 2 // IPCTNL_MSG_EXP_DELETE
)

// FollowMaster is the kernel's expectation function that NATs a data
// connection like its master: source to where the master's other direction
// goes, destination to the master's peer, at the saved port.
const FollowMaster = "nat-follow-master"

// Direction of a connection, as conntrack numbers them.
const (
	DirOriginal = 0
	DirReply    = 1
)

// Expectation is a data connection the kernel is to relate to Master.
type Expectation struct {
	Master Tuple // the control connection's original direction
	// Tuple is the data connection's first packet as it reaches conntrack;
	// its source port is a wildcard.
	Tuple Tuple
	// Dir is the direction of the master the data connection goes in
	// (DirOriginal: from the client, passive; DirReply: from the server,
	// active). NATTo's port is where it really goes: the kernel's
	// follow-master function NATs it to the master's peer at that port.
	Dir   uint32
	NATTo Tuple
	NAT   bool
	Class uint32
}

// mask is the expectation's mask: everything but the source port.
func (e Expectation) mask() Tuple {
	all4, all6 := [4]byte{255, 255, 255, 255}, [16]byte{}
	for i := range all6 {
		all6[i] = 255
	}
	m := Tuple{Proto: e.Tuple.Proto}
	if e.Tuple.Src.Addr().Unmap().Is4() {
		m.Src = addrPort(all4[:], 0)
		m.Dst = addrPort(all4[:], 0xffff)
	} else {
		m.Src = addrPort(all6[:], 0)
		m.Dst = addrPort(all6[:], 0xffff)
	}
	return m
}

// NFQAExp is e as a verdict's NFQA_EXP contents: the kernel creates the
// expectation on the packet's connection before the packet goes on. The
// timeout comes from the helper's policy for e.Class.
func (e Expectation) NFQAExp() ([]byte, error) {
	ae := encoder()
	if err := encodeTupleAttr(ae, ctaExpectTuple, e.Tuple); err != nil {
		return nil, err
	}
	if err := encodeTupleAttr(ae, ctaExpectMask, e.mask()); err != nil {
		return nil, err
	}
	if e.Class != 0 {
		ae.Uint32(ctaExpectClass, e.Class)
	}
	if e.NAT {
		var err error
		ae.Nested(ctaExpectNAT, func(n *netlink.AttributeEncoder) error {
			n.Uint32(ctaExpectNATDir, e.Dir)
			err = encodeTupleAttr(n, ctaExpectNATTuple, e.NATTo)
			return err
		})
		if err != nil {
			return nil, err
		}
		ae.String(ctaExpectFn, FollowMaster)
	}
	return ae.Encode()
}

// Conntrack is e for ctnetlink (ti-mo/conntrack's CreateExpect), which
// needs the master's tuple too.
func (e Expectation) Conntrack() conntrack.Expect {
	tuple := func(t Tuple) conntrack.Tuple {
		return conntrack.Tuple{
			IP:    conntrack.IPTuple{SourceAddress: t.Src.Addr(), DestinationAddress: t.Dst.Addr()},
			Proto: conntrack.ProtoTuple{Protocol: t.Proto, SourcePort: t.Src.Port(), DestinationPort: t.Dst.Port()},
		}
	}
	x := conntrack.Expect{
		TupleMaster: tuple(e.Master), Tuple: tuple(e.Tuple), Mask: tuple(e.mask()), Class: e.Class,
	}
	if e.NAT {
		// ti-mo/conntrack sends strings as they are: the kernel wants
		// them NUL-terminated.
		x.Function = FollowMaster + "\x00"
		x.NAT = conntrack.ExpectNAT{Direction: e.Dir == DirReply, Tuple: tuple(e.NATTo)}
	}
	return x
}

// CreateExpect creates e through ctnetlink.
func CreateExpect(c *conntrack.Conn, e Expectation) error {
	if err := c.CreateExpect(e.Conntrack()); err != nil {
		if isErrno(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("create expectation %v -> %v: the master has no helper: %w", e.Tuple.Src.Addr(), e.Tuple.Dst, err)
		}
		return fmt.Errorf("create expectation %v -> %v: %w", e.Tuple.Src.Addr(), e.Tuple.Dst, err)
	}
	return nil
}

// deleteExpectRequest asks ctnetlink to delete the expectation whose tuple
// is e's, whichever connection it belongs to.
func deleteExpectRequest(e Expectation) (netlink.Message, error) {
	ae := encoder()
	if err := encodeTupleAttr(ae, ctaExpectTuple, e.Tuple); err != nil {
		return netlink.Message{}, err
	}
	attrs, err := ae.Encode()
	if err != nil {
		return netlink.Message{}, err
	}
	family := uint8(unix.AF_INET)
	if e.Tuple.Src.Addr().Unmap().Is6() {
		family = unix.AF_INET6
	}
	return nfnlRequest(subsysCtnetlinkExp, ctExpMsgDelete, netlink.Acknowledge, family, 0, attrs), nil
}

// ReplaceExpect creates e through ct, first deleting through nl an
// expectation that holds e's tuple: the kernel keeps an expectation until
// it matches, times out or its master's entry goes, which for one whose
// data connection never came (the client gave up, or announced again on
// the same port) outlasts the daemon's claim on the port. Left there, it
// would refuse e (EEXIST) and take e's data connection to where it led.
func ReplaceExpect(ct *conntrack.Conn, nl *netlink.Conn, e Expectation) error {
	err := CreateExpect(ct, e)
	if !isErrno(err, unix.EEXIST) {
		return err
	}
	req, err := deleteExpectRequest(e)
	if err != nil {
		return err
	}
	if _, err := nl.Execute(req); err != nil && !isErrno(err, unix.ENOENT) {
		return fmt.Errorf("delete the expectation %v -> %v holding the tuple: %w", e.Tuple.Src.Addr(), e.Tuple.Dst, err)
	}
	return CreateExpect(ct, e)
}
