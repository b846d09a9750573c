package nft

import "github.com/google/nftables"

// Stub of h2's liveness element (contract signature), deleted at merge.
func (rs *Ruleset) KeepAlive(c *nftables.Conn) error { return nil }
