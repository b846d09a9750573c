package ipvs

import (
	"net/netip"
	"time"
)

// What conntrack tells the engine, fed by the daemon's follower of its
// events: an entry destroyed (closed and timed out, flushed, deleted by
// hand) removes its connection at once instead of when the connection's own
// timeout runs out; a state update gives a connection nobody else tracks
// its TCP state; a data connection confirmed ends its channel
// (ChannelUsed).

// destroyGrace keeps a connection that saw a packet this recently when its
// conntrack entry goes: a SYN that reuses a closed connection's ports makes
// the kernel destroy the old entry just as the new connection starts.
const destroyGrace = 2 * time.Second

// NeedsConntrackEnds reports whether a running service can put connections
// in the engine's table, whose ends and data channels only conntrack's
// events tell: any but a kernel-scheduled service without a helper, whose
// connections the daemon never sees. With none, the daemon need not
// listen, and the kernel then builds no event messages for it at all
// (a socket filter would only drop them after they were built).
func (e *Engine) NeedsConntrackEnds() bool {
	for _, s := range e.Services() {
		if s.Helper != nil || !s.InKernel() {
			return true
		}
	}
	return false
}

// NeedsConntrackStates reports whether a running service schedules by the
// connection counts that only conntrack's updates keep right: balanced
// connections without a helper, whose packets after the SYN are never
// queued, get their TCP state from ConntrackUpdated, which the
// least-connection schedulers weigh. Several events per connection: follow
// them only while this holds.
func (e *Engine) NeedsConntrackStates() bool {
	for _, s := range e.Services() {
		if s.Helper == nil && !s.UDP && !s.AddOn && byLoad(s.sched) {
			return true
		}
	}
	return false
}

// ConntrackUpdated takes the TCP state of a connection nobody else tracks
// (balanced without a helper) from its conntrack entry, whose original
// direction is client -> dst. The daemon maps conntrack's state to s:
// before established SynSent, established, close, any other FinWait.
func (e *Engine) ConntrackUpdated(client, dst netip.AddrPort, s TCPState) {
	c := e.Table.LookupVIP(client, dst)
	if c == nil || c.help != nil {
		return
	}
	c.mu.Lock()
	c.setState(s, now())
	c.mu.Unlock()
}

// ConntrackDestroyed handles the end of the conntrack entry with original
// direction client -> dst (a UDP flow's where udp is set), whose accounting,
// both directions together, counted packets and bytes.
func (e *Engine) ConntrackDestroyed(udp bool, client, dst netip.AddrPort, packets, bytes uint64) {
	table := e.Table
	if udp {
		table = e.UDP
		if e.replyEnded(client, dst) {
			return
		}
	}
	c := table.LookupVIP(client, dst)
	if c == nil || udp && c.keepForReplies() {
		return
	}
	c.mu.Lock()
	recent := now()-c.seen < int64(destroyGrace)
	c.mu.Unlock()
	if recent {
		return // a new connection on the same ports: the counts are not its
	}
	c.Real.Packets.Add(packets)
	c.Real.Bytes.Add(bytes)
	if table.Remove(c) {
		e.Stats.ConntrackGone.Add(1)
	}
}

// checkIdle asks conntrack, through Options.Alive, about the helped
// established connections that showed the daemon nothing for idleCheck
// (Conn.idle): one whose entry is gone leaves the table, as its lost
// destroy event would have removed it; one whose entry is there stays
// another helpedEstablished. Where conntrack cannot answer, the connection
// stays, at most helpedEstablished after its last packet or answer. It
// runs off the per-packet path (RunExpiry); alive is called without locks
// held.
func (e *Engine) checkIdle(at int64) (gone int) {
	if e.alive == nil {
		return 0
	}
	for _, c := range e.Table.idle(at, nil) {
		there, err := e.alive(c.Client, c.VIP)
		c.mu.Lock()
		// A packet since it was picked: the connection goes on (a reused
		// port's new connection would have replaced it).
		quiet := c.seen+int64(idleCheck) < at
		c.help.asked = at
		if err == nil && there {
			c.help.alive = at
		}
		c.mu.Unlock()
		if err == nil && !there && quiet && e.Table.Remove(c) {
			e.Stats.ConntrackGone.Add(1)
			gone++
		}
	}
	return gone
}
