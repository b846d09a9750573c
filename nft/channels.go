package nft

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"

	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/ipvs"
)

// OpenChannels adds the map elements of data channels, in one batch: a
// passive channel DNATs client -> VIP:port to the real server, an active
// one SNATs real server -> client:port to the VIP; behind the user's SNAT
// each gets the second translation too. A watch channel adds a learned
// server, whose packets are queued from then on; an acks channel a control
// connection whose pure ACKs are.
//
// An element whose key is still in a map with other data (a channel of an
// ended connection, not timed out yet, whose client port or VIP port comes
// round again) makes the batch fail: then the elements are added one by
// one, and that one replaced.
func (rs *Ruleset) OpenChannels(c *nftables.Conn, chs []ipvs.Channel) error {
	all, err := rs.channelElements(chs)
	if err != nil {
		return err
	}
	err = add(c, all)
	if errors.Is(err, unix.EEXIST) {
		// Add them one by one; only an element whose key is taken is
		// deleted first (others, learned servers above all, must never
		// be missing for a moment).
		err = nil
		for _, e := range all {
			aerr := add(c, []element{e})
			if errors.Is(aerr, unix.EEXIST) {
				if c.SetDeleteElements(e.set, []nftables.SetElement{{Key: e.el.Key}}) == nil {
					aerr = c.Flush()
				}
				if aerr == nil {
					aerr = add(c, []element{e})
				}
			}
			if err == nil {
				err = aerr
			}
		}
	}
	if err != nil {
		return fmt.Errorf("open %d data channels: %w", len(chs), err)
	}
	return nil
}

// AddChannels adds the channels' elements to c's batch without sending
// it: the caller sends them with other changes in one batch. Where that
// batch fails, OpenChannels sorts out which element was in the way.
func (rs *Ruleset) AddChannels(c *nftables.Conn, chs []ipvs.Channel) error {
	all, err := rs.channelElements(chs)
	if err != nil {
		return err
	}
	return queueAdd(c, all)
}

// channelElements are the elements of chs, with their timeouts.
func (rs *Ruleset) channelElements(chs []ipvs.Channel) ([]element, error) {
	var all []element
	for _, ch := range chs {
		els, err := rs.elements(ch)
		if err != nil {
			return nil, err
		}
		for _, e := range els {
			switch ch.Kind {
			case ipvs.ChannelWatch:
			case ipvs.ChannelAcks:
				// As long as the offsets they go with.
				e.el.Timeout = offsetsTimeout
			default:
				e.el.Timeout = ch.Timeout
			}
			all = append(all, e)
		}
	}
	return all, nil
}

func add(c *nftables.Conn, els []element) error {
	if err := queueAdd(c, els); err != nil {
		return err
	}
	return c.Flush()
}

func queueAdd(c *nftables.Conn, els []element) error {
	for _, e := range els {
		if err := c.SetAddElements(e.set, []nftables.SetElement{e.el}); err != nil {
			return fmt.Errorf("add element to %s: %w", e.set.Name, err)
		}
	}
	return nil
}

// CloseChannels deletes channels' elements, in one batch. An element gone
// already (timed out, or replaced by a channel with the same key) fails the
// batch: then they are deleted one by one, and only the gone ones skipped.
func (rs *Ruleset) CloseChannels(c *nftables.Conn, chs []ipvs.Channel) error {
	var all []element
	for _, ch := range chs {
		els, err := rs.elements(ch)
		if err != nil {
			return err
		}
		all = append(all, els...)
	}
	if err := delPresent(c, all); err != nil {
		return fmt.Errorf("close %d data channels: %w", len(chs), err)
	}
	return nil
}

// delPresent deletes elements in one batch; where one is gone already
// (timed out), one by one, skipping the gone ones.
func delPresent(c *nftables.Conn, all []element) error {
	err := del(c, all)
	if errors.Is(err, unix.ENOENT) {
		err = nil
		for _, e := range all {
			if derr := del(c, []element{e}); derr != nil && !errors.Is(derr, unix.ENOENT) && err == nil {
				err = derr
			}
		}
	}
	return err
}

// ForgetConns deletes the stream offsets and pure-ACK elements that ended
// connections left (ipvs.Ended), in one batch: a restarted daemon needs
// them only for connections that still run, and at hundreds of sessions a
// second their timeout alone would let them pile up in the kernel. One gone
// already (timed out) is skipped.
func (rs *Ruleset) ForgetConns(c *nftables.Conn, ends []ipvs.Ended) error {
	var all []element
	for _, x := range ends {
		if x.Offsets {
			f := rs.fams[0]
			if rs.fams[1].of(x.VIP.Addr()) {
				f = rs.fams[1]
			}
			all = append(all, element{f.offsets, nftables.SetElement{Key: connKey(x.Client, x.VIP)}})
		}
		f := rs.fams[0]
		if rs.fams[1].of(x.Server.Addr()) {
			f = rs.fams[1]
		}
		if x.Acks {
			all = append(all, element{f.acks, nftables.SetElement{Key: connKey(x.Client, x.Server)}})
		}
		if x.AcksNAT {
			all = append(all, element{f.acks, nftables.SetElement{Key: connKey(x.NAT, x.Server)}})
		}
	}
	if len(all) == 0 {
		return nil
	}
	if err := delPresent(c, all); err != nil {
		return fmt.Errorf("forget %d ended connections: %w", len(ends), err)
	}
	return nil
}

func del(c *nftables.Conn, els []element) error {
	for _, e := range els {
		// By key alone: the kernel finds the element whatever its data.
		if err := c.SetDeleteElements(e.set, []nftables.SetElement{{Key: e.el.Key}}); err != nil {
			return fmt.Errorf("delete element from %s: %w", e.set.Name, err)
		}
	}
	return c.Flush()
}

type element struct {
	set *nftables.Set
	el  nftables.SetElement
}

// elements are a channel's map elements (without timeout).
func (rs *Ruleset) elements(ch ipvs.Channel) ([]element, error) {
	f := rs.fams[0]
	if rs.fams[1].of(ch.Server.Addr()) {
		f = rs.fams[1]
	}
	switch ch.Kind {
	case ipvs.ChannelWatch:
		return []element{{f.watched, nftables.SetElement{Key: addrPortKey(ch.Server)}}}, nil
	case ipvs.ChannelAcks:
		// The server's segments are matched before NAT is undone, so
		// by the address it sends to.
		els := []element{{f.acks, nftables.SetElement{Key: connKey(ch.Client, ch.Server)}}}
		if ch.NAT.IsValid() {
			els = append(els, element{f.acks, nftables.SetElement{Key: connKey(ch.NAT, ch.Server)}})
		}
		return els, nil
	case ipvs.ChannelPassive:
		els := []element{{f.passive, nftables.SetElement{
			Key: flowKey(ch.Client.Addr(), ch.VIP.Addr(), ch.VIP.Port()),
			Val: addrPortKey(ch.Server),
		}}}
		if ch.NAT.IsValid() {
			// After DNAT the connection goes client -> server:port; the
			// server must see it come from where the control connection does.
			els = append(els, element{f.passiveSNAT, nftables.SetElement{
				Key: flowKey(ch.Client.Addr(), ch.Server.Addr(), ch.Server.Port()),
				Val: appendAddr(nil, ch.NAT.Addr()),
			}})
		}
		return els, nil
	case ipvs.ChannelActive:
		els := []element{{f.active, nftables.SetElement{
			Key: flowKey(ch.Server.Addr(), ch.Client.Addr(), ch.Client.Port()),
			Val: appendAddr(nil, ch.VIP.Addr()),
		}}}
		if ch.NAT.IsValid() {
			// The server connects to the port announced on the client's
			// translated address: lead it to the client.
			els = append(els, element{f.activeDNAT, nftables.SetElement{
				Key: flowKey(ch.Server.Addr(), ch.NAT.Addr(), ch.NAT.Port()),
				Val: addrPortKey(ch.Client),
			}})
		}
		return els, nil
	}
	return nil, fmt.Errorf("channel kind %d: %w", ch.Kind, ErrChannel)
}

// flowKey is a saddr . daddr . dport map key.
func flowKey(src, dst netip.Addr, port uint16) []byte {
	return appendPort(appendAddr(appendAddr(nil, src), dst), port)
}
