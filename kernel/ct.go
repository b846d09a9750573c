package kernel

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"

	"github.com/nfhelper/nfhelper/nfq/seqnum"
)

// Conntrack attributes (linux/netfilter/nfnetlink_conntrack.h) as they
// travel inside NFQA_CT.
const (
	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaStatus     = 3
	ctaHelp       = 5
	ctaMark       = 8
	ctaID         = 12

	ctaTupleIP    = 1
	ctaTupleProto = 2

	ctaIPv4Src = 1
	ctaIPv4Dst = 2
	ctaIPv6Src = 3
	ctaIPv6Dst = 4

	ctaProtoNum     = 1
	ctaProtoSrcPort = 2
	ctaProtoDstPort = 3

	ctaHelpName = 1
	ctaHelpInfo = 2
)

// Conntrack status bits (enum ip_conntrack_status) the datapath reads.
const (
	StatusExpected  = 1 << 0 // a related connection (a data channel)
	StatusSeenReply = 1 << 1 // packets went both ways
	StatusSrcNAT    = 1 << 4
	StatusDstNAT    = 1 << 5
	StatusSeqAdjust = 1 << 6
	StatusHelper    = 1 << 13 // a helper was assigned explicitly
)

// Tuple is one direction of a connection as conntrack keys it.
type Tuple struct {
	Src, Dst netip.AddrPort
	Proto    uint8
}

// Conntrack is what NFQA_CT says about a queued packet's connection.
type Conntrack struct {
	ID, Status, Mark uint32
	HasMark          bool
	Orig, Reply      Tuple
	// Helper and HelperInfo are the connection's helper and the private
	// data it keeps in the kernel (Helper.PrivLen bytes for a userspace
	// helper).
	Helper     string
	HelperInfo []byte
	// SeqAdj are the seqadj records by direction, where the kernel sent
	// them (HasSeqAdj).
	SeqAdj    [2]seqnum.Adj
	HasSeqAdj bool
}

// ParseConntrack decodes NFQA_CT's contents. Attributes it does not know
// are skipped; malformed ones are an error.
func ParseConntrack(b []byte) (Conntrack, error) {
	var ct Conntrack
	ad, err := decoder(b)
	if err != nil {
		return ct, fmt.Errorf("NFQA_CT: %w", err)
	}
	for ad.Next() {
		switch ad.Type() {
		case ctaTupleOrig:
			ad.Nested(func(n *netlink.AttributeDecoder) error { return parseTuple(n, &ct.Orig) })
		case ctaTupleReply:
			ad.Nested(func(n *netlink.AttributeDecoder) error { return parseTuple(n, &ct.Reply) })
		case ctaStatus:
			ct.Status = ad.Uint32()
		case ctaMark:
			ct.Mark, ct.HasMark = ad.Uint32(), true
		case ctaID:
			ct.ID = ad.Uint32()
		case ctaSeqAdjOrig, ctaSeqAdjRepl:
			a := &ct.SeqAdj[DirOriginal]
			if ad.Type() == ctaSeqAdjRepl {
				a = &ct.SeqAdj[DirReply]
			}
			ad.Nested(func(n *netlink.AttributeDecoder) error { return parseSeqAdj(n, a) })
			ct.HasSeqAdj = true
		case ctaHelp:
			ad.Nested(func(n *netlink.AttributeDecoder) error {
				for n.Next() {
					switch n.Type() {
					case ctaHelpName:
						ct.Helper = n.String()
					case ctaHelpInfo:
						ct.HelperInfo = append([]byte(nil), n.Bytes()...)
					}
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		return Conntrack{}, fmt.Errorf("NFQA_CT: %w", err)
	}
	return ct, nil
}

var errAddrLen = errors.New("address length")

func parseTuple(ad *netlink.AttributeDecoder, t *Tuple) error {
	var src, dst netip.Addr
	var sport, dport uint16
	for ad.Next() {
		switch ad.Type() {
		case ctaTupleIP:
			ad.Nested(func(n *netlink.AttributeDecoder) error {
				for n.Next() {
					var a netip.Addr
					var ok bool
					switch n.Type() {
					case ctaIPv4Src, ctaIPv4Dst, ctaIPv6Src, ctaIPv6Dst:
						a, ok = netip.AddrFromSlice(n.Bytes())
						if !ok {
							return errAddrLen
						}
						if n.Type() == ctaIPv4Src || n.Type() == ctaIPv6Src {
							src = a
						} else {
							dst = a
						}
					}
				}
				return nil
			})
		case ctaTupleProto:
			ad.Nested(func(n *netlink.AttributeDecoder) error {
				for n.Next() {
					switch n.Type() {
					case ctaProtoNum:
						t.Proto = n.Uint8()
					case ctaProtoSrcPort:
						sport = n.Uint16()
					case ctaProtoDstPort:
						dport = n.Uint16()
					}
				}
				return nil
			})
		}
	}
	t.Src, t.Dst = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	return ad.Err()
}

// encodeTupleAttr adds t as the nested attribute typ.
func encodeTupleAttr(ae *netlink.AttributeEncoder, typ uint16, t Tuple) error {
	s, d := t.Src.Addr().Unmap(), t.Dst.Addr().Unmap()
	if !s.IsValid() || !d.IsValid() || s.Is4() != d.Is4() {
		return fmt.Errorf("tuple %v -> %v: addresses of one family needed", t.Src, t.Dst)
	}
	ae.Nested(typ, func(n *netlink.AttributeEncoder) error {
		n.Nested(ctaTupleIP, func(ip *netlink.AttributeEncoder) error {
			if s.Is4() {
				ip.Bytes(ctaIPv4Src, s.AsSlice())
				ip.Bytes(ctaIPv4Dst, d.AsSlice())
			} else {
				ip.Bytes(ctaIPv6Src, s.AsSlice())
				ip.Bytes(ctaIPv6Dst, d.AsSlice())
			}
			return nil
		})
		n.Nested(ctaTupleProto, func(p *netlink.AttributeEncoder) error {
			p.Uint8(ctaProtoNum, t.Proto)
			p.Uint16(ctaProtoSrcPort, t.Src.Port())
			p.Uint16(ctaProtoDstPort, t.Dst.Port())
			return nil
		})
		return nil
	})
	return nil
}

// VerdictCT is the contents of a verdict's NFQA_CT that stores info as the
// connection's helper data (helper must be the connection's own helper, or
// the kernel ignores the whole NFQA_CT, seqadj included). A verdict with
// NFQA_CT and a payload of another length makes the kernel record the
// difference in the connection's seqadj.
func VerdictCT(helper string, info []byte) ([]byte, error) {
	if helper == "" || len(helper) > HelperNameMax {
		return nil, fmt.Errorf("helper name %q: 1 to %d bytes", helper, HelperNameMax)
	}
	if len(info) > PrivDataMax {
		return nil, fmt.Errorf("helper data: %d bytes, at most %d", len(info), PrivDataMax)
	}
	ae := encoder()
	ae.Nested(ctaHelp, func(n *netlink.AttributeEncoder) error {
		n.String(ctaHelpName, helper)
		if info != nil {
			n.Bytes(ctaHelpInfo, info)
		}
		return nil
	})
	return ae.Encode()
}

// VerdictCTMark is NFQA_CT contents that carry only the connection mark:
// the smallest NFQA_CT that still has the kernel apply seqadj.
func VerdictCTMark(mark uint32) ([]byte, error) {
	ae := encoder()
	ae.Uint32(ctaMark, mark)
	return ae.Encode()
}
