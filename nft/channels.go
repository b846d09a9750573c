package nft

import (
	"fmt"
	"time"

	"github.com/google/nftables"

	"github.com/nfhelper/nfhelper/ipvs"
)

// OpenChannels adds one timed map element per data channel, in one batch: a
// passive channel DNATs client -> VIP:port to the real server, an active one
// SNATs real server -> client:port to the VIP.
func (rs *Ruleset) OpenChannels(c *nftables.Conn, chs []ipvs.Channel, timeout time.Duration) error {
	for _, ch := range chs {
		var f *family
		for _, cand := range rs.fams {
			if cand.of(ch.VIP.Addr()) {
				f = cand
			}
		}
		var set *nftables.Set
		var el nftables.SetElement
		switch ch.Kind {
		case ipvs.ChannelPassive:
			set = f.passive
			el.Key = appendPort(appendAddr(appendAddr(nil, ch.Client.Addr()), ch.VIP.Addr()), ch.VIP.Port())
			el.Val = addrPortKey(ch.Server)
		case ipvs.ChannelActive:
			set = f.active
			el.Key = appendPort(appendAddr(appendAddr(nil, ch.Server.Addr()), ch.Client.Addr()), ch.Client.Port())
			el.Val = appendAddr(nil, ch.VIP.Addr())
		default:
			return fmt.Errorf("channel kind %d: %w", ch.Kind, ErrChannel)
		}
		el.Timeout = timeout
		if err := c.SetAddElements(set, []nftables.SetElement{el}); err != nil {
			return fmt.Errorf("add element to %s: %w", set.Name, err)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("open %d data channels: %w", len(chs), err)
	}
	return nil
}
