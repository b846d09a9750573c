package ipvs

import (
	"net/netip"
	"sync"
	"time"
)

// ChannelKind says which translation a data channel needs.
type ChannelKind uint8

const (
	// ChannelPassive: the client connects to VIP.Addr():VIP.Port(); the kernel
	// must send that connection to Server (DNAT).
	ChannelPassive ChannelKind = iota + 1
	// ChannelActive: the real server Server.Addr() connects to Client; the kernel
	// must make it leave with source address VIP.Addr() (SNAT).
	ChannelActive
	// ChannelWatch is no data channel: it asks the datapath to queue the
	// packets of real server Server, learned in add-on mode.
	ChannelWatch
	// ChannelAcks is no data channel: it asks the datapath to queue the pure
	// ACKs (no payload, no SYN, FIN or RST) of the control connection
	// between Client and Server (and NAT, the client's address as the
	// server sees it, where valid), which otherwise skip the daemon: its
	// streams now have edits or withheld bytes that the receivers'
	// acknowledgements concern.
	ChannelAcks
)

// Channel is a data connection the datapath must allow.
type Channel struct {
	Kind   ChannelKind
	Client netip.AddrPort // passive: port 0 (any client port); active: the announced address and port
	Server netip.AddrPort // passive: the announced address and port; active: port 0 (any)
	VIP    netip.AddrPort // passive: the port announced to the client; active: port 0 (keep)
	// NAT, where valid, is the client's translated address as the server
	// sees it (the user's SNAT, in add-on mode). Passive: the data
	// connection must reach the server from NAT's address too. Active: the
	// server connects to NAT, which must lead to Client.
	NAT     netip.AddrPort
	Timeout time.Duration
}

// openChannel is a channel a connection announced and may not have used yet.
type openChannel struct {
	ch      Channel
	expires int64
}

// passiveKey is what a passive channel claims: a port on the VIP for one
// client address (the kernel map's key).
type passiveKey struct {
	client netip.Addr
	vip    netip.AddrPort
}

type passiveClaim struct {
	conn    *Conn
	expires int64
}

// channelTable keeps passive claims, so that two connections of one client
// (from two control connections, or many users behind one NAT address)
// never announce the same VIP port for different servers.
type channelTable struct {
	mu      sync.Mutex
	passive map[passiveKey]passiveClaim
	// active claims, behind the user's SNAT: a port on the translated
	// address for one server (client = the server's address here).
	active map[passiveKey]passiveClaim
}

// maxPortTries bounds the search for a free VIP port.
const maxPortTries = 64

// OpenPassive implements ChannelOpener for the connection being processed.
func (w *Worker) OpenPassive(server netip.AddrPort) (netip.AddrPort, bool) {
	c, e, at := w.cur, w.e, w.now
	pol := c.Service.policy()
	t := &e.channels
	t.mu.Lock()
	defer t.mu.Unlock()
	port := server.Port()
	for range maxPortTries {
		key := passiveKey{c.Client.Addr(), netip.AddrPortFrom(c.VIP.Addr(), port)}
		claim, taken := t.passive[key]
		if e.snap.Load().services[key.vip] == nil && (!taken || claim.conn == c || claim.expires < at) {
			ch := Channel{Kind: ChannelPassive, Client: netip.AddrPortFrom(key.client, 0), Server: server, VIP: key.vip, NAT: c.help.clientNAT, Timeout: pol.ChannelTimeout}
			t.passive[key] = passiveClaim{conn: c, expires: at + int64(pol.ChannelTimeout)}
			w.admit(c, ch)
			return key.vip, true
		}
		// Another port, clear of the privileged range.
		if port++; port < 1024 {
			port = 1024
		}
	}
	w.e.Stats.Refused[RefuseNoPort].Add(1)
	return netip.AddrPort{}, false
}

// OpenActive implements ChannelOpener for the connection being processed.
func (w *Worker) OpenActive(client netip.AddrPort) (netip.AddrPort, bool) {
	c, e, at := w.cur, w.e, w.now
	t := &e.channels
	t.mu.Lock()
	defer t.mu.Unlock()
	ch := Channel{
		Kind: ChannelActive, Client: client, Server: netip.AddrPortFrom(c.Server.Addr(), 0),
		VIP: netip.AddrPortFrom(c.VIP.Addr(), 0), Timeout: c.Service.policy().ChannelTimeout,
	}
	if !c.help.clientNAT.IsValid() {
		w.admit(c, ch)
		return client, true
	}
	// The server sees the client as ClientNAT: announce a port there that
	// leads back to the client, the client's own where it is free.
	port := client.Port()
	for range maxPortTries {
		key := passiveKey{c.Server.Addr(), netip.AddrPortFrom(c.help.clientNAT.Addr(), port)}
		if claim, taken := t.active[key]; !taken || claim.conn == c || claim.expires < at {
			t.active[key] = passiveClaim{conn: c, expires: at + int64(ch.Timeout)}
			ch.NAT = key.vip
			w.admit(c, ch)
			return key.vip, true
		}
		if port++; port < 1024 {
			port = 1024
		}
	}
	e.Stats.Refused[RefuseNoPort].Add(1)
	return netip.AddrPort{}, false
}

// admit adds ch to the connection's open channels and to the verdict,
// evicting the oldest beyond the policy's limit, as the kernel evicts the
// oldest expectation. c.mu and the channel table's lock are held.
func (w *Worker) admit(c *Conn, ch Channel) {
	at := w.now
	keep := c.help.open[:0]
	for _, o := range c.help.open {
		switch {
		case o.expires < at, o.ch.key() == ch.key():
			// Timed out in the kernel already, or replaced in place.
		default:
			keep = append(keep, o)
		}
	}
	limit := max(c.Service.policy().MaxChannels, 1)
	for len(keep) >= limit {
		w.close = append(w.close, keep[0].ch)
		w.e.channels.release(c, keep[0].ch)
		keep = keep[:copy(keep, keep[1:])]
		w.e.Stats.Evicted.Add(1)
	}
	c.help.open = append(keep, openChannel{ch: ch, expires: at + int64(ch.Timeout)})
	w.open = append(w.open, ch)
}

// key is what identifies the channel's kernel map element.
func (ch Channel) key() Channel {
	ch.Timeout = 0
	return ch
}

// release drops c's claim on a channel's port; t.mu is held.
func (t *channelTable) release(c *Conn, ch Channel) {
	claims, key := t.passive, passiveKey{ch.Client.Addr(), ch.VIP}
	if ch.Kind == ChannelActive {
		if !ch.NAT.IsValid() {
			return
		}
		claims, key = t.active, passiveKey{ch.Server.Addr(), ch.NAT}
	}
	if claim, ok := claims[key]; ok && claim.conn == c {
		delete(claims, key)
	}
}

// forget drops every claim of a connection leaving the table.
func (t *channelTable) forget(c *Conn) {
	if c.help == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, o := range c.help.open {
		t.release(c, o.ch)
	}
}
