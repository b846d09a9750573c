package kernel

import (
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nfnetlink subsystems this package talks to.
const (
	subsysCtnetlink = 1
	subsysQueue     = 3
	subsysCthelper  = 9
)

// nfgenHeader is struct nfgenmsg: family, version 0, resource id (big
// endian), in front of every nfnetlink message's attributes.
func nfgenHeader(family uint8, resID uint16) []byte {
	b := []byte{family, unix.NFNETLINK_V0, 0, 0}
	binary.BigEndian.PutUint16(b[2:], resID)
	return b
}

// nfnlRequest is one nfnetlink request: subsystem and message type, the
// nfgenmsg header and the attributes.
func nfnlRequest(subsys, msg uint8, flags netlink.HeaderFlags, family uint8, resID uint16, attrs []byte) netlink.Message {
	return netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(uint16(subsys)<<8 | uint16(msg)),
			Flags: netlink.Request | flags,
		},
		Data: append(nfgenHeader(family, resID), attrs...),
	}
}

// dialNetfilter opens a NETLINK_NETFILTER socket in the calling process's
// network namespace.
func dialNetfilter() (*netlink.Conn, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("netfilter netlink: %w", err)
	}
	return c, nil
}

// encoder is a netlink attribute encoder in network byte order, as
// nfnetlink wants its integers.
func encoder() *netlink.AttributeEncoder {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	return ae
}

// decoder decodes b in network byte order.
func decoder(b []byte) (*netlink.AttributeDecoder, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	return ad, nil
}
