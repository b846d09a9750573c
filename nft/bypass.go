package nft

import (
	"net/netip"
	"time"

	"github.com/google/nftables"
)

// Bypass adds to the batch being built the fail-open element that sends
// the client's new connections to vip on a port of 1024 or more, that no
// channel took, to server with the port unchanged (bypassed4/6, see
// unseenReplyRules), for timeout. A backup router's daemon writes it for a
// control connection it adopts: the passive channels the old master
// announced were its nft elements, which conntrackd does not carry, and
// the port a 227 or 229 names is the server's own. replace: delete an
// element of the same key first (it must exist).
func (rs *Ruleset) Bypass(c *nftables.Conn, client, vip, server netip.Addr, timeout time.Duration, replace bool) error {
	f := rs.fams[0]
	if rs.fams[1].of(vip) {
		f = rs.fams[1]
	}
	key := appendAddr(appendAddr(nil, client), vip)
	if replace {
		if err := c.SetDeleteElements(f.bypassed, []nftables.SetElement{{Key: key}}); err != nil {
			return err
		}
	}
	return c.SetAddElements(f.bypassed, []nftables.SetElement{{Key: key, Val: appendAddr(nil, server), Timeout: timeout}})
}
