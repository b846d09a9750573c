package nft

import (
	"fmt"

	"github.com/google/nftables"

	"github.com/nfhelper/nfhelper/ipvs"
)

// OpenChannels adds one timed map element per data channel, in one batch: a
// passive channel DNATs client -> VIP:port to the real server, an active one
// SNATs real server -> client:port to the VIP.
func (rs *Ruleset) OpenChannels(c *nftables.Conn, chs []ipvs.Channel) error {
	for _, ch := range chs {
		set, el, err := rs.element(ch)
		if err != nil {
			return err
		}
		el.Timeout = ch.Timeout
		if err := c.SetAddElements(set, []nftables.SetElement{el}); err != nil {
			return fmt.Errorf("add element to %s: %w", set.Name, err)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("open %d data channels: %w", len(chs), err)
	}
	return nil
}

// CloseChannels deletes channels' elements, in one batch. An element that
// timed out meanwhile makes the batch fail; the others then time out too.
func (rs *Ruleset) CloseChannels(c *nftables.Conn, chs []ipvs.Channel) error {
	for _, ch := range chs {
		set, el, err := rs.element(ch)
		if err != nil {
			return err
		}
		if err := c.SetDeleteElements(set, []nftables.SetElement{el}); err != nil {
			return fmt.Errorf("delete element from %s: %w", set.Name, err)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("close %d data channels: %w", len(chs), err)
	}
	return nil
}

// element is a channel's map and element (without timeout).
func (rs *Ruleset) element(ch ipvs.Channel) (*nftables.Set, nftables.SetElement, error) {
	f := rs.fams[0]
	if rs.fams[1].of(ch.VIP.Addr()) {
		f = rs.fams[1]
	}
	switch ch.Kind {
	case ipvs.ChannelPassive:
		return f.passive, nftables.SetElement{
			Key: appendPort(appendAddr(appendAddr(nil, ch.Client.Addr()), ch.VIP.Addr()), ch.VIP.Port()),
			Val: addrPortKey(ch.Server),
		}, nil
	case ipvs.ChannelActive:
		return f.active, nftables.SetElement{
			Key: appendPort(appendAddr(appendAddr(nil, ch.Server.Addr()), ch.Client.Addr()), ch.Client.Port()),
			Val: appendAddr(nil, ch.VIP.Addr()),
		}, nil
	}
	return nil, nftables.SetElement{}, fmt.Errorf("channel kind %d: %w", ch.Kind, ErrChannel)
}
