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
	// ended: the channel ended without word of its data connection
	// (evicted, or its control connection ended); the claim only waits
	// out usedGrace.
	ended bool
	// server is where a passive channel leads (Policy.ECMP).
	server netip.AddrPort
}

// usedGrace is how long the claim of a channel that ended without word of
// its data connection stays: conntrack's event for a data connection that
// did start may still be on its way (a busy follower lags), and must not
// be taken for the data connection of the next channel on the same port,
// which is often the same server port too. The word, when it comes, ends
// the wait.
const usedGrace = int64(10 * time.Second)

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

// portSpan is how many ports a search for a free VIP port (or translated
// client port) tries: every unprivileged one. Claims end when their data
// connection starts or their control connection ends, so a search only
// goes far when one client address really holds that many pending channels.
const portSpan = 65536 - 1024

// nextPort is the port a search tries after p: the next one, clear of the
// privileged range, wrapping round at the top.
func nextPort(p uint16) uint16 {
	if p == 65535 || p < 1024 {
		return 1024
	}
	return p + 1
}

// OpenPassive implements ChannelOpener for the connection being processed.
func (w *Worker) OpenPassive(server netip.AddrPort) (netip.AddrPort, bool) {
	c, e, at := w.cur, w.e, w.now
	pol := c.Service.policy()
	services := e.snap.Load().services
	t := &e.channels
	t.mu.Lock()
	defer t.mu.Unlock()
	port := server.Port()
	for range portSpan + 1 {
		key := passiveKey{c.Client.Addr(), netip.AddrPortFrom(c.VIP.Addr(), port)}
		claim, taken := t.passive[key]
		if services[key.vip] == nil && (!taken || claim.conn == c && !claim.ended || claim.expires < at || pol.ECMP && claim.server == server) {
			ch := Channel{Kind: ChannelPassive, Client: netip.AddrPortFrom(key.client, 0), Server: server, VIP: key.vip, NAT: c.help.clientNAT, Timeout: pol.ChannelTimeout}
			t.passive[key] = passiveClaim{conn: c, expires: at + int64(pol.ChannelTimeout), server: server}
			w.admit(c, ch)
			return key.vip, true
		}
		port = nextPort(port)
	}
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
		// The client's own port, whoever announced it before: the claim
		// only finds the channel again when its data connection starts.
		t.active[ch.claimKey()] = passiveClaim{conn: c, expires: at + int64(ch.Timeout)}
		w.admit(c, ch)
		return client, true
	}
	// The server sees the client as ClientNAT: announce a port there that
	// leads back to the client, the client's own where it is free.
	port := client.Port()
	for range portSpan + 1 {
		key := passiveKey{c.Server.Addr(), netip.AddrPortFrom(c.help.clientNAT.Addr(), port)}
		if claim, taken := t.active[key]; !taken || claim.conn == c && !claim.ended || claim.expires < at {
			t.active[key] = passiveClaim{conn: c, expires: at + int64(ch.Timeout)}
			ch.NAT = key.vip
			w.admit(c, ch)
			return key.vip, true
		}
		port = nextPort(port)
	}
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
		w.e.channels.release(c, keep[0].ch, at+usedGrace)
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

// claimKey is the claim a channel holds, which is also the original
// source address and destination of its data connection in conntrack:
// passive, the client's address and the VIP port; active, the server's
// address and the port it connects to (on the client's translated address
// behind the user's SNAT).
func (ch Channel) claimKey() passiveKey {
	if ch.Kind == ChannelPassive {
		return passiveKey{ch.Client.Addr(), ch.VIP}
	}
	if ch.NAT.IsValid() {
		return passiveKey{ch.Server.Addr(), ch.NAT}
	}
	return passiveKey{ch.Server.Addr(), ch.Client}
}

// leadsTo is where the channel's data connection goes after NAT: its
// reply's source in conntrack.
func (ch Channel) leadsTo() netip.AddrPort {
	if ch.Kind == ChannelPassive {
		return ch.Server
	}
	return ch.Client
}

// claims is the claim table of channels of kind k.
func (t *channelTable) claims(k ChannelKind) map[passiveKey]passiveClaim {
	if k == ChannelPassive {
		return t.passive
	}
	return t.active
}

// release drops c's claim on a channel's port, at once (until 0) or when
// until has passed (an ended claim); t.mu is held.
func (t *channelTable) release(c *Conn, ch Channel, until int64) {
	claims, key := t.claims(ch.Kind), ch.claimKey()
	claim, ok := claims[key]
	switch {
	case !ok || claim.conn != c:
	case until == 0:
		delete(claims, key)
	default:
		claims[key] = passiveClaim{conn: c, expires: min(claim.expires, until), ended: true, server: claim.server}
	}
}

// Claimed reports whether a connection holds a live claim of ch's key: the
// datapath then keeps the key's kernel element when it closes ch (an
// evicted or used channel), as that connection's channel replaced it or
// is about to.
func (e *Engine) Claimed(ch Channel) bool {
	if ch.Kind != ChannelPassive && ch.Kind != ChannelActive {
		return false
	}
	t := &e.channels
	t.mu.Lock()
	defer t.mu.Unlock()
	// An ended claim only waits for late word of a data connection: its
	// channel is gone, and so must its element be.
	claim, ok := t.claims(ch.Kind)[ch.claimKey()]
	return ok && !claim.ended
}

// ChannelUsed is told of a data connection conntrack has just confirmed
// (its conntrack mark has nft.ChannelMark) by its original source address and
// destination and its reply's source (where the kernel sent it). The
// channel it used, if the daemon announced it, is done, as the kernel
// removes an expectation that matched: its claim goes, so that its port is
// free for the client's next channel, and the channel is returned for the
// datapath to delete its kernel elements.
func (e *Engine) ChannelUsed(src netip.Addr, dst, to netip.AddrPort) (Channel, bool) {
	t := &e.channels
	key := passiveKey{src, dst}
	t.mu.Lock()
	kind := ChannelPassive
	claim, ok := t.passive[key]
	if !ok {
		kind = ChannelActive
		claim, ok = t.active[key]
	}
	t.mu.Unlock()
	if !ok {
		return Channel{}, false
	}
	c := claim.conn
	// c.mu before t.mu, as the workers take them.
	c.mu.Lock()
	defer c.mu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	claims := t.claims(kind)
	switch now, ok := claims[key]; {
	case !ok || now.conn != c:
		return Channel{}, false // released or claimed anew meanwhile
	case now.ended:
		// The channel ended before this word came: what it waited
		// for is here, its port free.
		delete(claims, key)
		return Channel{}, false
	}
	for i, o := range c.help.open {
		// A data connection that went elsewhere than this channel leads
		// (its event came late, after the port changed hands) leaves it.
		if o.ch.Kind == kind && o.ch.claimKey() == key && o.ch.leadsTo() == to {
			delete(claims, key)
			c.help.open = append(c.help.open[:i], c.help.open[i+1:]...)
			e.Stats.Used.Add(1)
			c.Service.helperStats.ChannelsUsed.Add(1)
			return o.ch, true
		}
	}
	return Channel{}, false
}

// closeOpen ends every channel the connection announced and its data
// connection has not used: its control connection ends (the server's FIN,
// or a reset), after which no data connection can follow. Their claims go
// now, and their kernel elements with the verdict (w.close). c.mu is held.
func (w *Worker) closeOpen(c *Conn) {
	t := &w.e.channels
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, o := range c.help.open {
		t.release(c, o.ch, w.now+usedGrace)
		w.close = append(w.close, o.ch)
	}
	c.help.open = c.help.open[:0]
}

// forget drops every claim of a connection leaving the table.
func (t *channelTable) forget(c *Conn) {
	if c.help == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, o := range c.help.open {
		t.release(c, o.ch, 0)
	}
}
