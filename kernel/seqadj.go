package kernel

import (
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/nfq/seqnum"
)

// Conntrack attributes of a connection's seqadj records and TCP state.
const (
	ctaProtoinfo  = 4
	ctaSeqAdjOrig = 15
	ctaSeqAdjRepl = 16

	ctaSeqAdjPos    = 1
	ctaSeqAdjBefore = 2
	ctaSeqAdjAfter  = 3

	ctaProtoinfoTCP         = 1
	ctaProtoinfoTCPFlagsOrg = 4
	ctaProtoinfoTCPFlagsRep = 5

	tcpFlagBeLiberal = 0x08 // IP_CT_TCP_FLAG_BE_LIBERAL

	ctMsgNew = 0 // IPCTNL_MSG_CT_NEW
)

// parseSeqAdj decodes one direction's seqadj record (struct nf_ct_seqadj).
func parseSeqAdj(ad *netlink.AttributeDecoder, a *seqnum.Adj) error {
	for ad.Next() {
		switch ad.Type() {
		case ctaSeqAdjPos:
			a.Pos = seqnum.Value(ad.Uint32())
		case ctaSeqAdjBefore:
			a.Before = seqnum.Delta(ad.Uint32())
		case ctaSeqAdjAfter:
			a.After = seqnum.Delta(ad.Uint32())
		}
	}
	return ad.Err()
}

// SetSeqAdj sets the seqadj records of the connection whose original
// direction is orig (by direction: DirOriginal, DirReply) and marks its
// TCP tracking liberal in both directions: the records no longer follow
// from the segments conntrack saw, so neither do its window checks.
func SetSeqAdj(c *netlink.Conn, orig Tuple, adj [2]seqnum.Adj) error {
	ae := encoder()
	if err := encodeTupleAttr(ae, ctaTupleOrig, orig); err != nil {
		return err
	}
	for d, typ := range [2]uint16{ctaSeqAdjOrig, ctaSeqAdjRepl} {
		a := adj[d]
		ae.Nested(typ, func(n *netlink.AttributeEncoder) error {
			n.Uint32(ctaSeqAdjPos, uint32(a.Pos))
			n.Uint32(ctaSeqAdjBefore, uint32(a.Before))
			n.Uint32(ctaSeqAdjAfter, uint32(a.After))
			return nil
		})
	}
	liberal := []byte{tcpFlagBeLiberal, tcpFlagBeLiberal} // struct nf_ct_tcp_flags: flags, mask
	ae.Nested(ctaProtoinfo, func(n *netlink.AttributeEncoder) error {
		n.Nested(ctaProtoinfoTCP, func(t *netlink.AttributeEncoder) error {
			t.Bytes(ctaProtoinfoTCPFlagsOrg, liberal)
			t.Bytes(ctaProtoinfoTCPFlagsRep, liberal)
			return nil
		})
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	if err := updateConntrack(c, orig, attrs); err != nil {
		return fmt.Errorf("set seqadj of %v -> %v: %w", orig.Src, orig.Dst, err)
	}
	return nil
}

// ReportConntrack has the kernel report the connection whose original
// direction is orig, changing nothing: any ctnetlink update raises an
// update event with its seqadj records, mark, labels and helper. The
// kernel raises none when it changes seqadj records itself (at a verdict
// with NFQA_CT, or in its own FTP helper), so without this conntrackd
// would never carry a lengthened reply's offsets to a backup router.
func ReportConntrack(c *netlink.Conn, orig Tuple) error {
	ae := encoder()
	if err := encodeTupleAttr(ae, ctaTupleOrig, orig); err != nil {
		return err
	}
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	if err := updateConntrack(c, orig, attrs); err != nil {
		return fmt.Errorf("report %v -> %v: %w", orig.Src, orig.Dst, err)
	}
	return nil
}

// updateConntrack sends a ctnetlink update of the existing connection
// whose original direction is orig (no NLM_F_CREATE: only an existing
// connection is changed).
func updateConntrack(c *netlink.Conn, orig Tuple, attrs []byte) error {
	family := uint8(unix.AF_INET)
	if orig.Src.Addr().Unmap().Is6() {
		family = unix.AF_INET6
	}
	req := nfnlRequest(subsysCtnetlink, ctMsgNew, netlink.Acknowledge, family, 0, attrs)
	_, err := c.Execute(req)
	return err
}

// DialCtnetlink opens a netlink socket for SetSeqAdj.
func DialCtnetlink() (*netlink.Conn, error) { return dialNetfilter() }
