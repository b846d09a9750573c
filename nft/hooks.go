package nft

import "github.com/google/nftables"

// hook is one of the table's base chains that a configuration may not
// need. A base chain costs every packet the router passes, ours or not, a
// hook call and a walk of its first rules; a table of plain
// kernel-scheduled services alone needs none of these (only dstnat, and
// refuse_input and heartbeat, which forwarded packets never walk), and then
// costs the router what the user's own `dnat to numgen` would.
type hook int

const (
	hookRaw     hook = iota // raw_prerouting: SYNs to daemon-scheduled VIPs, servers' segments
	hookMangle              // mangle_prerouting: new UDP flows to daemon-scheduled VIPs, the userspace helper
	hookClean               // prerouting: the daemon's mark bits, invalid packets, data connections, templates
	hookForward             // forward: refusals, add-on SYNs, clients' segments
	hookUnseen              // forward_unseen: add-on SYNs and UDP requests that bypassed the daemon
	hookSNAT                // srcnat: active data connections, answers to requests
	hookReplies             // reply_open: requests whose answers come from new ports (TFTP)
	numHooks
)

// hookSet says which hooks are (to be) installed.
type hookSet [numHooks]bool

// hooksFor are the hooks spec needs on rs's datapath. helpedLeft: a stale
// table's run-time elements (data channels, learned servers) are carried
// while spec helps nothing: they keep the helped connections' hooks until
// the next Update. repliesLeft: likewise requests awaiting their answer
// (replies4/6), which need srcnat (and new_conn, ChannelMark on the
// answers) only.
func (rs *Ruleset) hooksFor(spec *Spec, helpedLeft, repliesLeft bool) hookSet {
	helped := helpedLeft || len(spec.AddOns) > 0 || len(spec.LiveVIPs) > 0 || len(spec.LiveServers) > 0
	// queued: the daemon schedules some service (its new connections are
	// queued, its verdicts leave mark bits, its fail-open map may be
	// empty). refused: a kernel-scheduled service has nothing to send a
	// connection to, which the forward hook refuses. persist: templates
	// are written after DNAT.
	var queued, refused, persist, replies, udpAddOns bool
	for _, ad := range spec.AddOns {
		udpAddOns = udpAddOns || ad.UDP
		replies = replies || ad.Replies > 0
	}
	for i := range spec.Services {
		svc := &spec.Services[i]
		helped = helped || svc.Helped
		replies = replies || svc.Replies > 0
		if svc.Kernel == nil {
			queued = true
			continue
		}
		persist = persist || svc.Kernel.Persist != nil
		if runs, _, _ := kernelRuns(svc); len(runs) == 0 {
			refused = true
		}
	}
	compat := rs.queue.CtHelper == ""
	var h hookSet
	h[hookRaw] = queued || compat && helped
	h[hookMangle] = queued || !compat && helped
	h[hookClean] = queued || helped || persist || repliesLeft
	h[hookForward] = queued || helped || refused
	h[hookUnseen] = compat && rs.queue.KernelFTP && helped || rs.queue.KernelTFTP && udpAddOns
	h[hookSNAT] = helped || replies || repliesLeft
	h[hookReplies] = replies
	return h
}

// setHooks adds to the batch the base chains (with their rules) that want
// has and rs lacks, and deletes those rs has and want lacks; the rules of
// reply_open, which follow spec, it adds anew. The regular chains they
// jump to are always there.
func (rs *Ruleset) setHooks(a ruleAdder, spec *Spec, want hookSet) {
	if want[hookReplies] && rs.hooks[hookReplies] {
		a.c.FlushChain(&nftables.Chain{Name: replyOpenChain, Table: rs.table})
	}
	for h := range numHooks {
		switch {
		case want[h] && !rs.hooks[h]:
			rs.addHook(a, h)
		case !want[h] && rs.hooks[h]:
			ch := &nftables.Chain{Name: hookNames[h], Table: rs.table}
			a.c.FlushChain(ch)
			a.c.DelChain(ch)
		}
	}
	rs.hooks = want
	if want[hookReplies] {
		rs.replyOpenRules(a, spec)
	}
}

var hookNames = [numHooks]string{"raw_prerouting", "mangle_prerouting", "prerouting", "forward", "forward_unseen", "srcnat", replyOpenChain}

// addHook adds base chain h and its rules.
func (rs *Ruleset) addHook(a ruleAdder, h hook) {
	q := &rs.queue
	compat := q.CtHelper == ""
	named := func(name string) *nftables.Chain { return &nftables.Chain{Name: name} }
	switch h {
	case hookRaw:
		ch := a.chain(hookNames[h], nftables.ChainTypeFilter, nftables.ChainHookPrerouting, *nftables.ChainPriorityRaw)
		for _, f := range rs.fams {
			// The family's last rule: a goto ends there.
			a.rule(ch, l4protoTCP(), nfproto(f.proto), goTo(named(f.name("raw"))))
		}
	case hookMangle:
		ch := a.chain(hookNames[h], nftables.ChainTypeFilter, nftables.ChainHookPrerouting, *nftables.ChainPriorityMangle)
		a.rule(ch, ctStateIs(newBit), jump(named("mangle_new")))
	case hookClean:
		ch := a.chain(hookNames[h], nftables.ChainTypeFilter, nftables.ChainHookPrerouting, *nftables.ChainPriorityNATDest+1)
		a.rule(ch, markBitsSet(q.MarkMask|UnseenMark), jump(named("marked")))
		if !compat {
			a.rule(ch, ctDirectionReply(), replyLike(), jump(named("replies")))
		}
		a.rule(ch, ctStateIs(invalidBit|newBit), jump(named("new_conn")))
	case hookForward:
		// Client to server packets are corrected after conntrack has
		// judged them in the client's sequence space.
		ch := a.chain(hookNames[h], nftables.ChainTypeFilter, nftables.ChainHookForward, *nftables.ChainPriorityFilter)
		a.rule(ch, ctStateIs(newBit), jump(rs.fwdNew))
		if compat {
			// The last rule: a goto ends there.
			a.rule(ch, ctDirectionOriginal(), ctStateIs(establishedBit), goTo(named("forward_orig")))
		}
	case hookUnseen:
		ch := a.chain(hookNames[h], nftables.ChainTypeFilter, nftables.ChainHookForward, *nftables.ChainPriorityFilter+1)
		a.rule(ch, markBitsSet(q.MarkMask), ctStateIs(newBit), jump(named("unseen_syn")))
	case hookSNAT:
		ch := a.chain(hookNames[h], nftables.ChainTypeNAT, nftables.ChainHookPostrouting, *nftables.ChainPriorityNATSource)
		for _, f := range rs.fams {
			snatRules(a, ch, newFamMatch(f))
			replySNATRules(a, ch, newFamMatch(f))
		}
	case hookReplies:
		a.chain(hookNames[h], nftables.ChainTypeFilter, nftables.ChainHookPostrouting, nftables.ChainPriority(replyOpenPriority))
	}
}
