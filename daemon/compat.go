package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
	"github.com/nfhelper/nfhelper/nfq"
	"github.com/nfhelper/nfhelper/nft"
)

// compatPath is the compat datapath (kernel.DatapathCompat): data channels,
// stream offsets and pure-ACK elements are elements of the table's maps.
// It writes them off the queue readers' goroutines, so that the wait for
// nftables holds back only the packets that need them.
type compatPath struct {
	conn    *nftables.Conn
	ruleset *nft.Ruleset
	log     *slog.Logger
	engine  *ipvs.Engine
	reqs    chan *pending
	// inflight counts packets submitted and not yet answered.
	inflight sync.WaitGroup
	// ended are connections whose offsets and pure-ACK elements are to go.
	ended chan ipvs.Ended
	// used are channels whose data connection started: their elements go.
	used chan ipvs.Channel
	// adopted are control connections taken up mid-stream (a backup
	// router after a failover) whose elements are to be written.
	adopted chan adoption
	// ctnl writes stream offsets into connections' labels.
	ctnl *netlink.Conn
}

// adoption is a control connection another router balanced, adopted
// from the conntrack entry conntrackd made here: its stream offsets go
// into offsets4/6 (a restart keeps them), and the client's data
// connections that the old master's channels would have taken go to its
// server (nft.Ruleset.Bypass).
type adoption struct {
	client, vip, server netip.AddrPort
	off                 [2]int32
	timeout             time.Duration
}

// pending is a packet held until its elements are in the kernel.
type pending struct {
	from        *handler // whose queue it came from
	id          uint32
	drop        bool
	setMark     bool
	mark        uint32
	pkt         []byte
	open, close []ipvs.Channel
	offsets     ipvs.Offsets
	start       time.Time // when its queue handed it over
	// announcing: the connection drops copies of this packet until its
	// verdict is given (ipvs.Verdict.Announcing).
	announcing *ipvs.Conn
}

func (c *compatPath) name() string { return kernel.DatapathCompat }

// options: the elements of ended connections go (connEnded). The backlog
// exists before the engine: restored connections may end before run runs.
func (c *compatPath) options(o *ipvs.Options) {
	o.Datapath = ipvs.DatapathCompat
	o.OnEnded = c.connEnded
}

// attach: the elements of used channels go (channelUsed). (The kernel
// datapath's expectations go when they match.) Connections conntrackd
// creates here, which the engine never saw, are adopted from their events
// (adopt); the kernel datapath adopts them from their packets' NFQA_CT.
func (c *compatPath) attach(e *ipvs.Engine, f *conntrackFollower) {
	c.engine = e
	f.used = c.channelUsed
	f.adopt = c.adopt
}

// adopt takes up an established connection of a helped service that the
// engine does not hold, with the stream offsets its labels carry, and
// hands its elements to run.
func (c *compatPath) adopt(client, vip, server netip.AddrPort, labels []byte) {
	off := kernel.OffsetsFromLabels(labels)
	svc := c.engine.Adopt(client, vip, server, off)
	if svc == nil {
		return
	}
	select {
	case c.adopted <- adoption{client: client, vip: vip, server: server, off: off, timeout: svc.Policy.ChannelTimeout}:
	default:
		c.log.Warn("adopted connection's elements not written: the datapath is too far behind", "client", client, "vip", vip)
	}
}

// shape: a helped kernel-scheduled connection's SYN never reaches the
// daemon, so the rules lower its MSS (the SYN-ACK's the daemon lowers when
// it picks the connection up).
func (c *compatPath) shape(spec *nft.Spec) { spec.MSSRoom = ipvs.MSSRoom }

func (c *compatPath) allows(*config.Config) error { return nil }

// takeOver restores what a daemon that did not stop cleanly left in its
// table (restore.go), then the FTP helpers' states a predecessor that
// handed over passed on (handover.go).
func (c *compatPath) takeOver(spec *nft.Spec) {
	var err error
	if spec.Carried, err = restore(c.engine, spec.Table, c.log); err != nil {
		// The kernel datapath takes connections over from their helper
		// data instead (kernel.go).
		c.log.Warn("state left by an earlier daemon not taken over", "err", err)
	} else if n, err := takeHelperStates(c.engine); err != nil {
		c.log.Warn("helper states of the predecessor not taken", "taken", n, "err", err)
	} else if n > 0 {
		c.log.Info("helper states taken from the predecessor", "connections", n)
	}
}

func (c *compatPath) openQueues(uint16, map[uint16]int) ([]*nfq.Queue, error) { return nil, nil }

// dial opens one netlink socket for every batch of elements, not one each.
func (c *compatPath) dial() (err error) {
	if c.conn, err = nftables.New(nftables.AsLasting()); err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if c.ctnl, err = kernel.DialCtnetlink(); err != nil {
		return fmt.Errorf("ctnetlink: %w", err)
	}
	return nil
}

func (c *compatPath) register(*nftables.Conn, *nft.Spec) error { return nil }

func (c *compatPath) inspect([]byte) kernel.Conntrack { return kernel.Conntrack{} }

// answer gives the verdict at once, or hands the packet to the batches of
// run when it needs elements first.
func (c *compatPath) answer(h *handler, id uint32, _ []byte, v ipvs.Verdict, _ kernel.Conntrack) bool {
	if len(v.Open) > 0 || len(v.Close) > 0 || v.Offsets.Store || v.Acks.Kind != 0 {
		open := append([]ipvs.Channel(nil), v.Open...)
		if v.Acks.Kind != 0 {
			open = append(open, v.Acks)
		}
		queued := c.submit(&pending{
			from: h, id: id, drop: v.Drop, setMark: v.SetMark, mark: v.Mark, start: h.start, offsets: v.Offsets,
			pkt:        append([]byte(nil), v.Packet...),
			open:       open,
			close:      append([]ipvs.Channel(nil), v.Close...),
			announcing: v.Announcing,
		})
		if queued {
			return false
		}
		// The datapath is that far behind (a flood of announcements):
		// the packet goes on without its channels rather than stall
		// every other packet of this queue.
		h.stats.Backlogged.Add(uint64(len(v.Open)))
		if v.Acks.Kind != 0 {
			h.w.AcksNotOpened(v.Acks)
		}
	}
	h.verdict(id, &v)
	if v.Announcing != nil {
		h.w.Announced(v.Announcing)
	}
	return true
}

// submit hands p to run; false when its backlog is full.
func (c *compatPath) submit(p *pending) bool {
	c.inflight.Add(1)
	select {
	case c.reqs <- p:
		return true
	default:
		c.inflight.Done()
		return false
	}
}

// channelUsed hands the elements of a channel whose data connection
// started to run; with its backlog full they time out instead.
func (c *compatPath) channelUsed(ch ipvs.Channel) {
	select {
	case c.used <- ch:
	default:
	}
}

// connEnded hands the elements of a connection that left the table to
// run; with its backlog full they time out instead.
func (c *compatPath) connEnded(x ipvs.Ended) {
	select {
	case c.ended <- x:
	default:
	}
}

// run writes the elements the packets, the engine and conntrack ask for,
// in batches, until ctx ends.
func (c *compatPath) run(ctx context.Context, ruleset *nft.Ruleset) {
	c.ruleset = ruleset
	var batch []*pending
	var open, close []ipvs.Channel
	var ends []ipvs.Ended
	var adopted []adoption
	for {
		batch, ends, adopted = batch[:0], ends[:0], adopted[:0]
		open, close = open[:0], close[:0]
		select {
		case <-ctx.Done():
			return
		case p := <-c.reqs:
			batch = append(batch, p)
		case x := <-c.ended:
			ends = append(ends, x)
		case ch := <-c.used:
			close = append(close, ch)
		case a := <-c.adopted:
			adopted = append(adopted, a)
		}
		// Everything queued meanwhile goes into the same nftables batch.
		batch = receive(c.reqs, batch, 64)
		close = receive(c.used, close, 256)
		for _, p := range batch {
			open = append(open, p.open...)
			close = append(close, p.close...)
		}
		c.open(batch, open)
		c.answerBatch(batch)
		c.labelOffsets(batch)
		c.adoptElements(receive(c.adopted, adopted, 256))
		// Evicted, used and ended channels may go after the verdicts:
		// nothing waits on them. A key claimed again keeps its element:
		// the new channel's replaced it or is about to (this goroutine
		// adds every element, so one asked for after the check comes
		// after the deletion).
		close = slices.DeleteFunc(close, c.engine.Claimed)
		if len(close) > 0 {
			if err := c.ruleset.CloseChannels(c.conn, close); err != nil {
				c.log.Warn("data channels not closed; they time out", "count", len(close), "err", err)
			}
		}
		ends = c.forget(ends)
	}
}

// receive appends to xs what waits in ch, until xs has max.
func receive[T any](ch <-chan T, xs []T, max int) []T {
	for len(xs) < max {
		select {
		case x := <-ch:
			xs = append(xs, x)
		default:
			return xs
		}
	}
	return xs
}

// open writes the stream offsets and channel elements of the batch's
// packets in one nftables batch: a length-changing 227 needs both, and each
// batch costs a round trip through the kernel's nftables transaction. When
// that fails (an element to replace timed out, a stale channel holds a
// key), nothing of it is in: the offsets go again, one by one where
// needed, and the channels on their own.
func (c *compatPath) open(batch []*pending, open []ipvs.Channel) {
	n := c.addOffsets(batch)
	if len(open) > 0 {
		if err := c.ruleset.AddChannels(c.conn, open); err != nil {
			c.log.Error("data channels not opened", "count", len(open), "err", err)
		}
	}
	if n == 0 && len(open) == 0 || c.conn.Flush() == nil {
		return
	}
	c.storeOffsets(batch)
	if len(open) == 0 {
		return
	}
	if err := c.ruleset.OpenChannels(c.conn, open); err != nil {
		c.log.Error("data channels not opened", "count", len(open), "err", err)
		for _, ch := range open {
			if ch.Kind == ipvs.ChannelAcks {
				c.engine.AcksNotOpened(ch)
			}
		}
	}
}

// addOffsets adds the stream offsets the batch's packets changed to the
// nftables batch being built; how many.
func (c *compatPath) addOffsets(batch []*pending) int {
	n := 0
	for _, p := range batch {
		if o := p.offsets; o.Store {
			c.ruleset.StoreOffsets(c.conn, o.Client, o.VIP, o.Off, o.Replace)
			n++
		}
	}
	return n
}

// storeOffsets records the stream offsets the batch's packets changed, in
// one nftables batch; where that fails (an element to replace timed out),
// one by one.
func (c *compatPath) storeOffsets(batch []*pending) {
	if n := c.addOffsets(batch); n == 0 || c.conn.Flush() == nil {
		return
	}
	for _, p := range batch {
		if o := p.offsets; o.Store {
			c.ruleset.StoreOffsets(c.conn, o.Client, o.VIP, o.Off, o.Replace)
			err := c.conn.Flush()
			if err != nil && o.Replace {
				c.ruleset.StoreOffsets(c.conn, o.Client, o.VIP, o.Off, false)
				err = c.conn.Flush()
			}
			if err != nil {
				c.log.Warn("stream offsets not recorded; a restart would lose them", "client", o.Client, "vip", o.VIP, "err", err)
			}
		}
	}
}

// labelOffsets writes the stream offsets the batch's packets changed into
// their connections' labels, where conntrackd carries them to a backup
// router (kernel.SetOffsetLabels, which also raises the event it sends).
// After the verdicts: only the backup waits for them.
func (c *compatPath) labelOffsets(batch []*pending) {
	for _, p := range batch {
		if o := p.offsets; o.Store {
			orig := kernel.Tuple{Src: o.Client, Dst: o.VIP, Proto: unix.IPPROTO_TCP}
			if err := kernel.SetOffsetLabels(c.ctnl, orig, o.Off); err != nil {
				c.log.Warn("stream offsets not put in the connection's labels; a backup router would not know them", "err", err)
			}
		}
	}
}

// adoptElements writes the elements of adopted connections in one
// nftables batch; where that fails (an element of the same key exists),
// one by one, replacing.
func (c *compatPath) adoptElements(adopted []adoption) {
	if len(adopted) == 0 {
		return
	}
	add := func(a adoption, replace bool) {
		if a.off != [2]int32{} {
			c.ruleset.StoreOffsets(c.conn, a.client, a.vip, a.off, false)
		}
		c.ruleset.Bypass(c.conn, a.client.Addr(), a.vip.Addr(), a.server.Addr(), a.timeout, replace)
	}
	for _, a := range adopted {
		add(a, false)
	}
	if c.conn.Flush() == nil {
		return
	}
	for _, a := range adopted {
		add(a, false)
		if c.conn.Flush() == nil {
			continue
		}
		c.ruleset.Bypass(c.conn, a.client.Addr(), a.vip.Addr(), a.server.Addr(), a.timeout, true)
		if err := c.conn.Flush(); err != nil {
			c.log.Warn("adopted connection's data connections not sent to its server", "client", a.client, "vip", a.vip, "err", err)
		}
	}
}

// answerBatch gives the batch's packets their verdicts.
func (c *compatPath) answerBatch(batch []*pending) {
	for _, p := range batch {
		if err := verdict(p.from.q, p.id, p.drop, p.setMark, p.mark, p.pkt); err != nil && !errors.Is(err, context.Canceled) {
			c.log.Warn("verdict", "err", err)
		}
		if p.announcing != nil {
			c.engine.Announced(p.announcing)
		}
		p.from.mx.ObserveVerdict(time.Since(p.start))
		c.inflight.Done()
	}
}

// forget deletes, in one nftables batch, the offsets and pure-ACK elements
// of the connections that ended since the last time (ends, and what waits
// in c.ended). Elements a newer connection on the same ports holds stay
// (Engine.Unowned): this goroutine adds every element, so one asked for
// after the check is added after the deletion.
func (c *compatPath) forget(ends []ipvs.Ended) []ipvs.Ended {
	ends = receive(c.ended, ends, 256)
	if len(ends) == 0 {
		return ends
	}
	for i, x := range ends {
		ends[i] = c.engine.Unowned(x)
	}
	if err := c.ruleset.ForgetConns(c.conn, ends); err != nil {
		c.log.Warn("elements of ended connections not deleted; they time out", "count", len(ends), "err", err)
	}
	return ends
}

// idle waits until every submitted packet has its verdict.
func (c *compatPath) idle() { c.inflight.Wait() }

// handOver passes the FTP helpers' pending commands on: a reply to one
// this process saw comes to the successor.
func (c *compatPath) handOver() {
	if err := passHelperStates(c.engine); err != nil {
		c.log.Warn("helper states not passed on", "err", err)
	}
}

func (c *compatPath) unregister() {}

func (c *compatPath) close() {
	if c.conn != nil {
		c.conn.CloseLasting()
	}
	if c.ctnl != nil {
		c.ctnl.Close()
	}
}
