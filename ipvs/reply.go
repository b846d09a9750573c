package ipvs

import "net/netip"

// replyState is a datagram helper's request flow: what the client asked,
// and the reply flows its server started, as conntrack's events tell them
// (the kernel forwards them; the daemon never sees their packets).
type replyState struct {
	about string
	flows []ReplyFlow
	// requestGone: conntrack destroyed the request's own entry (30 s
	// without a copy); the flow stays in the table while replies run.
	requestGone bool
}

// ReplyFlow is a flow a request let its server start: a TFTP transfer.
type ReplyFlow struct {
	Server  netip.AddrPort // the server's port for it (its transfer ID)
	VIP     netip.AddrPort // that port as the client sees it, on the VIP
	seen    netip.AddrPort // the client as the server sees it
	started int64
}

// replyKey names a reply flow by its original direction.
type replyKey struct{ server, client netip.AddrPort }

// pendingRequest is a request flow whose answer has not come, until when
// it counts.
type pendingRequest struct {
	conn  *Conn
	until int64
}

// admitRequest counts c's request against its client host's bound
// (Policy.MaxPending) of requests awaiting their answer, for the channel
// timeout: a copy of a pending one renews it. false: over the bound.
func (e *Engine) admitRequest(c *Conn, at int64) bool {
	p := c.Service.policy()
	addr := c.Client.Addr()
	e.mu.Lock()
	defer e.mu.Unlock()
	list, self := e.pending[addr][:0], -1
	for _, r := range e.pending[addr] {
		if r.until < at {
			continue
		}
		if r.conn == c {
			self = len(list)
		}
		list = append(list, r)
	}
	admit := self >= 0 || len(list) < p.MaxPending
	switch {
	case self >= 0:
		list[self].until = at + int64(p.ChannelTimeout)
	case admit:
		list = append(list, pendingRequest{c, at + int64(p.ChannelTimeout)})
	}
	if len(list) == 0 {
		delete(e.pending, addr)
	} else {
		e.pending[addr] = list
	}
	return admit
}

// answered stops counting c as pending; e.mu is held.
func (e *Engine) answered(c *Conn) {
	addr := c.Client.Addr()
	list := e.pending[addr]
	for i, r := range list {
		if r.conn == c {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(e.pending, addr)
	} else {
		e.pending[addr] = list
	}
}

// ReplyStarted records a reply flow that conntrack saw start: original
// direction server -> seen (the client as the server sees it: the client
// itself, or the user's SNAT of it in add-on mode), reply direction client
// -> vip. It reports whether a request of that client to a service (or
// add-on) at vip's address, sent to that server, awaited it.
func (e *Engine) ReplyStarted(server, seen, client, vip netip.AddrPort) bool {
	for _, s := range e.Services() {
		if s.Datagram == nil || s.VIP.Addr() != vip.Addr() {
			continue
		}
		c := e.UDP.LookupVIP(client, s.VIP)
		if c == nil || c.Server.Addr() != server.Addr() {
			continue
		}
		c.mu.Lock()
		if c.reply == nil {
			c.reply = &replyState{}
		}
		c.reply.flows = append(c.reply.flows, ReplyFlow{Server: server, VIP: vip, seen: seen, started: now()})
		c.mu.Unlock()
		e.mu.Lock()
		e.replies[replyKey{server, seen}] = c
		e.answered(c)
		e.mu.Unlock()
		e.Stats.RepliesStarted.Add(1)
		s.helperStats.ChannelsUsed.Add(1)
		return true
	}
	return false
}

// replyEnded handles the end of the conntrack entry with original
// direction server -> client, if it is a reply flow: it leaves its
// request, and a request whose own entry went leaves the table with its
// last reply. It reports whether it was one.
func (e *Engine) replyEnded(server, client netip.AddrPort) bool {
	k := replyKey{server, client}
	e.mu.Lock()
	c := e.replies[k]
	delete(e.replies, k)
	e.mu.Unlock()
	if c == nil {
		return false
	}
	c.mu.Lock()
	r := c.reply
	for i, f := range r.flows {
		if f.Server == server {
			r.flows = append(r.flows[:i], r.flows[i+1:]...)
			break
		}
	}
	done := r.requestGone && len(r.flows) == 0
	c.mu.Unlock()
	if done {
		e.UDP.Remove(c)
	}
	return true
}

// keepForReplies reports whether a request flow whose conntrack entry
// went stays for the replies still running, and notes that it went.
func (c *Conn) keepForReplies() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reply == nil || len(c.reply.flows) == 0 {
		return false
	}
	c.reply.requestGone = true
	return true
}

// forgetReplies drops what the engine holds of a request flow leaving the
// table: its pending count, its replies' index entries.
func (e *Engine) forgetReplies(c *Conn) {
	c.mu.Lock()
	var flows []ReplyFlow
	if c.reply != nil {
		flows = c.reply.flows
	}
	c.mu.Unlock()
	if c.Service.Datagram == nil {
		return
	}
	e.mu.Lock()
	e.answered(c)
	for _, f := range flows {
		if k := (replyKey{f.Server, f.seen}); e.replies[k] == c {
			delete(e.replies, k)
		}
	}
	e.mu.Unlock()
}
