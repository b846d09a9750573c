package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
	"github.com/nfhelper/nfhelper/metrics"
	"github.com/nfhelper/nfhelper/nfq"
	"github.com/nfhelper/nfhelper/nft"
)

const (
	tableName = "nfhelper"
	// markMask holds the real server's index in the packet mark of a new
	// connection's SYN, from the queue verdict until DNAT has used it.
	markMask = 0x00ff0000
)

// run runs the daemon until ctx ends (a full stop: the table goes) or
// SIGUSR2 asks for a hand-over, which leaves the table and returns the
// queue sockets for the successor (see handover.go).
func run(ctx context.Context, path string, cfg *config.Config, log *slog.Logger) (inherit map[uint16]*os.File, err error) {
	started := time.Now()

	// The datapath: what the kernel has decides (kernel.go).
	probeConn, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	features := kernel.Probe(probeConn)
	datapathName, err := chooser(cfg)(features)
	if err != nil {
		return nil, err
	}
	kernelDP := datapathName == kernel.DatapathKernel
	// The datapath's backlogs exist before the engine: restored
	// connections may end before the datapath runs.
	dp := &datapath{log: log, reqs: make(chan *pending, 1024), ended: make(chan ipvs.Ended, 4096), used: make(chan ipvs.Channel, 4096)}
	alive := &conntrackAlive{}
	defer alive.close()
	opts := ipvs.Options{MarkMask: markMask, Log: log, OnEnded: dp.connEnded, Alive: alive.alive}
	if kernelDP {
		opts.Datapath = ipvs.DatapathKernel
	}
	engine, err := ipvs.NewEngine(services(cfg), opts)
	if err != nil {
		return nil, err
	}
	dp.engine = engine
	spec := specFor(cfg, engine.Services())
	// Either datapath queues with the native expression where the kernel
	// has it: the xtables target's module cannot be autoloaded from an inet
	// table, so it is used only where nothing else exists, after the probe
	// loaded it (kernel.ProbeXtQueue).
	spec.NativeQueue = features.QueueExpr() == kernel.QueueNative
	// Fail-open for new sessions: the kernel's FTP helper takes the control
	// connections that bypass the daemon.
	if spec.KernelFTP = features.KernelFTP == nil; !spec.KernelFTP {
		log.Warn("fail-open covers control connections only: new FTP sessions cannot transfer while the daemon is down", "err", features.KernelFTP)
	}
	if kernelDP {
		spec.CtHelper = helperName
	} else if spec.Carried, err = restore(engine, tableName, log); err != nil {
		// The kernel datapath takes connections over from their helper
		// data instead (kernel.go).
		log.Warn("state left by an earlier daemon not taken over", "err", err)
	} else if n, err := takeHelperStates(engine); err != nil {
		log.Warn("helper states of the predecessor not taken", "taken", n, "err", err)
	} else if n > 0 {
		log.Info("helper states taken from the predecessor", "connections", n)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup

	var queues []*nfq.Queue
	defer func() {
		for _, q := range queues {
			q.Close()
		}
	}()
	inherited := inheritedQueues()
	for i := range spec.QueueTotal {
		q, err := openQueue(spec.QueueNum+i, inherited)
		if err != nil {
			return nil, err
		}
		queues = append(queues, q)
	}
	var helperQueue *nfq.Queue
	if kernelDP {
		num := spec.QueueNum + spec.QueueTotal
		if fd, ok := inherited[num]; ok {
			delete(inherited, num)
			helperQueue, err = nfq.Adopt(fd, nfq.Config{Num: num})
		} else {
			helperQueue, err = openHelperQueue(num)
		}
		if err != nil {
			return nil, err
		}
		queues = append(queues, helperQueue)
	}
	closeUnused(inherited)
	mx := metrics.New(engine, queues)
	// One netlink socket for every batch of data channels, not one each.
	dpConn, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	defer dpConn.CloseLasting()
	dp.conn, dp.metrics = dpConn, mx
	follower := &conntrackFollower{engine: engine}
	if !kernelDP {
		// (The kernel removes an expectation itself when it matches.)
		follower.used = dp.channelUsed
	}
	if kernelDP {
		if dp.ct, err = dialConntrack(); err != nil {
			return nil, err
		}
		defer dp.ct.Close()
		if dp.ctnl, err = kernel.DialCtnetlink(); err != nil {
			return nil, err
		}
		defer dp.ctnl.Close()
	}

	// Queues are bound before the rules exist: the first queued packet
	// finds a reader, and a second daemon stops here, before it could
	// replace the running one's table.
	errs := make(chan error, len(queues))
	// The readers stop first at a hand-over: what they have not read waits
	// in the sockets for the successor.
	readCtx, stopReading := context.WithCancel(ctx)
	var readers sync.WaitGroup
	for _, q := range queues {
		var done <-chan error
		if q == helperQueue {
			done, err = startHelperQueue(readCtx, q, kernelHandler(ctQueue{q}, q.Num, engine, dp, mx, log))
		} else {
			done, err = q.Start(readCtx, handler(q, q.Num, engine.NewWorker(), &engine.Stats, dp, mx, log))
		}
		if err != nil {
			stopReading()
			return nil, err
		}
		readers.Go(func() {
			if err := <-done; err != nil {
				errs <- err
			}
		})
	}
	defer readers.Wait()
	defer stopReading()

	nftConn, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	if kernelDP {
		// A helper left by a crash is updated in place (its connections
		// keep it), and a stale table is replaced atomically by Install
		// below: removing it first would take the NAT hooks away from
		// running connections for a moment. Only a stale helper that
		// cannot be updated and that the stale table holds needs the
		// table gone first; the queues are ours, so it is no other
		// running daemon's.
		policy := helperPolicy(engine.Services())
		helper, err := registerHelper(spec.QueueNum+spec.QueueTotal, policy)
		if errors.Is(err, unix.EBUSY) {
			if err := nft.Remove(nftConn, tableName); err != nil {
				return nil, err
			}
			helper, err = registerHelper(spec.QueueNum+spec.QueueTotal, policy)
		}
		if err != nil {
			return nil, err
		}
		defer func() {
			if inherit != nil {
				return // the successor goes on with it
			}
			// After the table (deferred below, so run first): its ct
			// helper object holds the helper.
			if err := helper.unregister(); err != nil {
				log.Error("cleanup", "err", err)
			}
		}()
	}
	ruleset, err := nft.Install(nftConn, spec)
	if err != nil {
		return nil, err
	}
	defer func() {
		if inherit != nil {
			return // the successor takes the table over
		}
		if err := nft.Remove(nftConn, tableName); err != nil {
			log.Error("cleanup", "err", err)
		}
	}()
	dp.ruleset = ruleset // before dp.run starts; no packet announced a channel before the rules existed

	// The control socket (nfhelperctl): the daemon runs without it if it
	// cannot have it.
	configPath, _ := filepath.Abs(path)
	control := &ctl.Server{Engine: engine, Log: log, Choose: chooser(cfg), Info: ctl.Info{
		Pid: os.Getpid(), Started: started, Datapath: datapathName, Config: configPath, Table: tableName,
		Queues: ctl.Queues{First: spec.QueueNum, Count: spec.QueueTotal}, QueueExpr: queueExprName(spec),
	}}
	if err := control.Listen(ctl.SocketPath()); err != nil {
		log.Warn("no control socket; nfhelperctl cannot reach this daemon", "err", err)
	} else {
		wg.Go(func() {
			if err := control.Serve(ctx); err != nil {
				log.Warn("control socket", "err", err)
			}
		})
	}
	wg.Go(func() { dp.run(ctx) })
	wg.Go(func() { engine.RunExpiry(time.Second, ctx.Done()) })
	wg.Go(func() {
		// Without events the table's own timeouts still end connections.
		if err := follower.followEnds(ctx); err != nil {
			control.NoteConntrack(err)
			log.Warn("not following conntrack", "err", err)
		}
	})
	states := &stateFollower{engine: engine, follower: follower, log: log, wg: &wg}
	states.adjust(ctx)
	if addr := cfg.Metrics.Address; addr != "" {
		wg.Go(func() {
			if err := metrics.Listen(ctx, addr, mx.Handler(), cfg.Metrics.AllowRemote); err != nil {
				log.Error("metrics endpoint", "address", addr, "err", err)
			}
		})
	}
	log.Info("ready", "datapath", datapathName, "queue_expr", queueExprName(spec), "queues", fmt.Sprintf("%d-%d", spec.QueueNum, spec.QueueNum+spec.QueueTotal-1+boolInt(kernelDP)),
		"services", len(spec.Services), "helpers", len(spec.AddOns), "table", "inet "+tableName, "socket", control.Path())

	hup, usr2 := make(chan os.Signal, 1), make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(hup)
	defer signal.Stop(usr2)
	handover := false
wait:
	for {
		select {
		case <-ctx.Done():
			err = nil
			break wait
		case err = <-errs:
			break wait
		case <-usr2:
			handover = true
			break wait
		case <-hup:
			err := reload(path, cfg.Queue, engine, ruleset, nftConn, kernelDP)
			control.NoteReload(err)
			if err != nil {
				logErrors(log, "reload failed; the running configuration stays", err)
			} else {
				states.adjust(ctx)
				log.Info("reloaded", "config", path)
			}
		}
	}
	if handover {
		stopReading()
		readers.Wait()
		dp.idle() // every packet the readers took has its verdict
		inherit = make(map[uint16]*os.File, len(queues))
		for _, q := range queues {
			f, ferr := q.Inherit()
			if ferr != nil {
				// Without its socket the successor would have to bind the
				// queue anew: stop as usual instead.
				log.Error("hand-over", "err", ferr)
				handover, inherit = false, nil
				break
			}
			inherit[q.Num] = f
		}
	}
	if !handover {
		// Stop queueing first, then answer what is already queued: closing
		// a queue drops the packets still waiting in it.
		if err := nft.Remove(nftConn, tableName); err != nil {
			log.Error("cleanup", "err", err)
		}
		drain(queues, time.Second)
	}
	cancel()
	for _, q := range queues {
		q.Close()
	}
	queues = nil
	wg.Wait()
	for _, svc := range engine.Services() {
		for _, rs := range svc.Servers {
			log.Info("server", "service", svc.Name, "server", rs.Addr, "weight", rs.Weight, "conns", rs.Conns.Load(),
				"active", rs.Active.Load(), "inactive", rs.Inactive.Load(), "packets", rs.Packets.Load(), "bytes", rs.Bytes.Load())
		}
	}
	if handover {
		// The FTP helpers' pending commands: a reply to one this process
		// saw comes to the successor. (The kernel datapath keeps them in
		// the connections' helper data.)
		if !kernelDP {
			if err := passHelperStates(engine); err != nil {
				log.Warn("helper states not passed on", "err", err)
			}
		}
		log.Info("handing over", statsAttrs(&engine.Stats)...)
		return inherit, nil
	}
	log.Info("stopping", statsAttrs(&engine.Stats)...)
	return nil, err
}

func statsAttrs(s *ipvs.Stats) []any {
	attrs := []any{
		"packets", s.Packets.Load(), "scheduled", s.Scheduled.Load(), "no_server", s.NoServer.Load(),
		"adopted", s.Adopted.Load(), "snat_learned", s.SNATLearned.Load(),
		"rewritten", s.Rewritten.Load(), "corrected", s.Corrected.Load(), "held", s.Held.Load(),
		"dropped_out_of_order", s.Dropped.Load(), "channels", s.Channels.Load(), "evicted", s.Evicted.Load(),
		"channels_used", s.Used.Load(), "stopped_tls", s.Stopped.Load(), "conntrack_gone", s.ConntrackGone.Load(), "unparsed", s.Unparsed.Load(), "bad_checksum", s.BadChecksum.Load(),
		"helper_errors", s.HelperErrors.Load(), "panics", s.Panics.Load(), "backlogged", s.Backlogged.Load(), "restored", s.Restored.Load(), "throttled", s.Throttled.Load(), "skipped", s.Skipped.Load(), "seqadj_set", s.SeqAdjSet.Load(),
	}
	for r := range s.Refused {
		attrs = append(attrs, "refused_"+ipvs.Refusal(r).String(), s.Refused[r].Load())
	}
	return attrs
}

// stateFollower runs conntrack's state updates while a least-connection
// scheduler needs them: they cost several events per connection.
type stateFollower struct {
	engine   *ipvs.Engine
	follower *conntrackFollower
	log      *slog.Logger
	wg       *sync.WaitGroup
	stop     context.CancelFunc
}

func (f *stateFollower) adjust(ctx context.Context) {
	need := f.engine.NeedsConntrackStates()
	switch {
	case need && f.stop == nil:
		var fctx context.Context
		fctx, f.stop = context.WithCancel(ctx)
		f.wg.Go(func() {
			if err := f.follower.followStates(fctx); err != nil {
				f.log.Warn("not following conntrack states; least-connection counts drift", "err", err)
			}
		})
	case !need && f.stop != nil:
		f.stop()
		f.stop = nil
	}
}

// drain waits, at most max, until no packet waits in the kernel for a
// verdict from queues.
func drain(queues []*nfq.Queue, max time.Duration) {
	ours := map[uint16]bool{}
	for _, q := range queues {
		ours[q.Num] = true
	}
	for deadline := time.Now().Add(max); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		waiting := false
		for _, k := range nfq.KernelStats(nfq.ProcQueueStats) {
			waiting = waiting || ours[k.Num] && k.Queued > 0
		}
		if !waiting {
			return
		}
	}
}

// reload applies a changed configuration file: the kernel's part first, in
// one batch, then the engine's; on any error nothing changes.
func reload(path string, queue config.Queue, engine *ipvs.Engine, ruleset *nft.Ruleset, conn *nftables.Conn, kernelDP bool) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	if cfg.Queue != queue {
		return fmt.Errorf("queue settings changed: restart the daemon to apply them")
	}
	if kernelDP && len(cfg.Helpers) > 0 {
		return errAddonsKernel
	}
	next := services(cfg)
	commit, err := engine.Prepare(next)
	if err != nil {
		return err
	}
	spec := specFor(cfg, next)
	if kernelDP {
		spec.CtHelper = helperName
	}
	// Running connections keep reaching the daemon even if their service or
	// server is gone from the file.
	spec.LiveVIPs, spec.LiveServers = engine.Live()
	if err := ruleset.Update(conn, spec); err != nil {
		return err
	}
	commit()
	return nil
}

// services turns the configuration into engine services (marks unset).
func services(cfg *config.Config) []*ipvs.Service {
	var out []*ipvs.Service
	for _, sc := range cfg.Services {
		var helper ipvs.Helper
		if sc.Helper != "" {
			helper, _ = ipvs.LookupHelper(sc.Helper)
		}
		var reals []*ipvs.RealServer
		for _, r := range sc.RealServers {
			reals = append(reals, &ipvs.RealServer{Addr: r.Addr, Weight: r.EffectiveWeight()})
		}
		// The configuration was validated: the scheduler exists.
		svc, _ := ipvs.NewService(sc.Name, sc.VIPAddr, sc.Scheduler, helper, reals)
		svc.Policy = sc.Policy()
		svc.UDP = sc.Protocol == "udp"
		if p := sc.Persistence; p != nil {
			v4, v6 := p.Prefixes()
			svc.Persist = ipvs.NewPersistence(p.Timeout, v4, v6)
		}
		out = append(out, svc)
	}
	for _, ac := range cfg.Helpers {
		helper, _ := ipvs.LookupHelper(ac.Helper)
		svc := ipvs.NewAddOn(ac.Name, ac.MatchAddr, helper, 0)
		svc.Policy = ac.Policy()
		out = append(out, svc)
	}
	return out
}

// specFor is the ruleset for services whose marks the engine assigned.
// Weights come from the file: a reload's new weights reach the servers the
// engine keeps only at its commit, after the kernel's part.
func specFor(cfg *config.Config, services []*ipvs.Service) *nft.Spec {
	type serverKey struct {
		udp       bool
		vip, addr netip.AddrPort
	}
	weights := map[serverKey]int{}
	for _, sc := range cfg.Services {
		for _, r := range sc.RealServers {
			weights[serverKey{sc.Protocol == "udp", sc.VIPAddr, r.Addr}] = r.EffectiveWeight()
		}
	}
	q := cfg.Queue
	spec := &nft.Spec{Table: tableName, QueueNum: 100, QueueTotal: uint16(runtime.NumCPU()), MarkMask: markMask}
	if q.First != 0 {
		spec.QueueNum = q.First
	}
	if q.Count != 0 {
		spec.QueueTotal = q.Count
	}
	for _, svc := range services {
		if svc.AddOn {
			spec.AddOns = append(spec.AddOns, nft.AddOn{Match: svc.VIP, Mark: svc.Mark})
			continue
		}
		ns := nft.Service{VIP: svc.VIP, UDP: svc.UDP, Helped: svc.Helper != nil}
		for _, rs := range svc.Servers {
			ns.Servers = append(ns.Servers, nft.Server{Addr: rs.Addr, Mark: rs.Mark, Weight: weights[serverKey{svc.UDP, svc.VIP, rs.Addr}]})
		}
		spec.Services = append(spec.Services, ns)
	}
	return spec
}

// verdicter answers for queued packets: an *nfq.Queue, or a fake in tests.
type verdicter interface {
	Accept(id uint32, setMark bool, mark uint32, pkt []byte) error
	Drop(id uint32) error
}

// handler is one queue's per-packet path: decide, then either answer at
// once or hand the packet to the datapath when it announces a data channel.
// A panic on the way is a bug: the packet goes on unmodified, the worker
// goes on with the next one.
func handler(q verdicter, num uint16, w *ipvs.Worker, stats *ipvs.Stats, dp *datapath, mx *metrics.Metrics, log *slog.Logger) nfq.Handler {
	return func(id uint32, pkt []byte, mark uint32) {
		start := time.Now()
		defer func() {
			if r := recover(); r != nil {
				stats.Panics.Add(1)
				log.Error("worker panic; packet accepted unmodified", "panic", r, "total", stats.Panics.Load())
				q.Accept(id, mark&nft.UnseenMark != 0, mark&^nft.UnseenMark, nil)
			}
		}()
		v := w.Process(pkt, mark)
		mx.CountVerdict(num, v)
		if mark&nft.UnseenMark != 0 {
			// The daemon saw this server segment: it must not look
			// bypassed to the rules after conntrack.
			if !v.SetMark {
				v.SetMark, v.Mark = true, mark
			}
			v.Mark &^= nft.UnseenMark
		}
		if len(v.Open) > 0 || len(v.Close) > 0 || v.Offsets.Store || v.Acks.Kind != 0 {
			open := append([]ipvs.Channel(nil), v.Open...)
			if v.Acks.Kind != 0 {
				open = append(open, v.Acks)
			}
			queued := dp.submit(&pending{
				q: q, id: id, drop: v.Drop, setMark: v.SetMark, mark: v.Mark, start: start, offsets: v.Offsets,
				pkt:        append([]byte(nil), v.Packet...),
				open:       open,
				close:      append([]ipvs.Channel(nil), v.Close...),
				announcing: v.Announcing,
			})
			if queued {
				return
			}
			// The datapath is that far behind (a flood of announcements):
			// the packet goes on without its channels rather than stall
			// every other packet of this queue.
			stats.Backlogged.Add(uint64(len(v.Open)))
			if v.Acks.Kind != 0 {
				w.AcksNotOpened(v.Acks)
			}
		}
		if err := verdict(q, id, v.Drop, v.SetMark, v.Mark, v.Packet); err != nil {
			log.Warn("verdict", "err", err)
		}
		if v.Announcing != nil {
			w.Announced(v.Announcing)
		}
		mx.ObserveVerdict(time.Since(start))
	}
}

// logErrors logs err, one entry per configuration error it holds.
func logErrors(log *slog.Logger, msg string, err error) {
	var errs config.Errors
	if !errors.As(err, &errs) {
		log.Error(msg, "err", err)
		return
	}
	for _, e := range errs {
		log.Error(msg, "err", e.Error())
	}
}

func verdict(q verdicter, id uint32, drop, setMark bool, mark uint32, pkt []byte) error {
	if drop {
		return q.Drop(id)
	}
	return q.Accept(id, setMark, mark, pkt)
}

// pending is a packet held until its data channels are in the kernel.
type pending struct {
	q           verdicter
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

	// The kernel datapath: the NFQA_CT contents the verdict carries (nil:
	// none).
	ct []byte
}

// verdict answers for p.
func (p *pending) verdict() error {
	if sa, ok := p.q.(seqAdjuster); ok && p.ct != nil && !p.drop && !p.setMark {
		return sa.AcceptSeqAdj(p.id, p.pkt, p.ct)
	}
	return verdict(p.q, p.id, p.drop, p.setMark, p.mark, p.pkt)
}

// datapath opens data channels off the queue readers' goroutines, so the
// wait for nftables holds back only the packets that announce a channel.
type datapath struct {
	ruleset *nft.Ruleset
	conn    *nftables.Conn
	log     *slog.Logger
	metrics *metrics.Metrics
	reqs    chan *pending
	// inflight counts packets submitted and not yet answered.
	inflight sync.WaitGroup
	ct       *conntrack.Conn // the kernel datapath's expectations
	ctnl     *netlink.Conn   // the kernel datapath's seqadj records
	engine   *ipvs.Engine    // told of acks channels that did not open
	// ended are connections whose offsets and pure-ACK elements are to go.
	ended chan ipvs.Ended
	// used are channels whose data connection started: their elements go.
	used chan ipvs.Channel
}

// channelUsed hands the elements of a channel whose data connection
// started to the datapath; with its backlog full they time out instead.
func (d *datapath) channelUsed(ch ipvs.Channel) {
	select {
	case d.used <- ch:
	default:
	}
}

// connEnded hands the elements of a connection that left the table to the
// datapath; with its backlog full they time out instead.
func (d *datapath) connEnded(x ipvs.Ended) {
	select {
	case d.ended <- x:
	default:
	}
}

// submit hands p to the datapath; false when its backlog is full.
func (d *datapath) submit(p *pending) bool {
	d.inflight.Add(1)
	select {
	case d.reqs <- p:
		return true
	default:
		d.inflight.Done()
		return false
	}
}

// idle waits until every submitted packet has its verdict.
func (d *datapath) idle() { d.inflight.Wait() }

func (d *datapath) run(ctx context.Context) {
	var batch []*pending
	var open, close []ipvs.Channel
	var ends []ipvs.Ended
	for {
		batch, ends = batch[:0], ends[:0]
		open, close = open[:0], close[:0]
		select {
		case <-ctx.Done():
			return
		case p := <-d.reqs:
			batch = append(batch, p)
		case x := <-d.ended:
			ends = append(ends, x)
		case ch := <-d.used:
			close = append(close, ch)
		}
		// Everything queued meanwhile goes into the same nftables batch.
	drain:
		for len(batch) < 64 {
			select {
			case p := <-d.reqs:
				batch = append(batch, p)
			default:
				break drain
			}
		}
	used:
		for len(close) < 256 {
			select {
			case ch := <-d.used:
				close = append(close, ch)
			default:
				break used
			}
		}
		for _, p := range batch {
			open = append(open, p.open...)
			close = append(close, p.close...)
		}
		if !d.commit(batch, open) {
			d.storeOffsets(batch)
			if len(open) > 0 {
				if err := d.ruleset.OpenChannels(d.conn, open); err != nil {
					d.log.Error("data channels not opened", "count", len(open), "err", err)
					for _, ch := range open {
						if ch.Kind == ipvs.ChannelAcks {
							d.engine.AcksNotOpened(ch)
						}
					}
				}
			}
		}
		for _, p := range batch {
			if err := p.verdict(); err != nil && !errors.Is(err, context.Canceled) {
				d.log.Warn("verdict", "err", err)
			}
			if p.announcing != nil {
				d.engine.Announced(p.announcing)
			}
			d.metrics.ObserveVerdict(time.Since(p.start))
			d.inflight.Done()
		}
		// Evicted, used and ended channels may go after the verdicts:
		// nothing waits on them. A key claimed again keeps its element:
		// the new channel's replaced it or is about to (this goroutine
		// adds every element, so one asked for after the check comes
		// after the deletion).
		close = slices.DeleteFunc(close, d.engine.Claimed)
		if len(close) > 0 {
			if err := d.ruleset.CloseChannels(d.conn, close); err != nil {
				d.log.Warn("data channels not closed; they time out", "count", len(close), "err", err)
			}
		}
		ends = d.forget(ends)
	}
}

// forget deletes, in one nftables batch, the offsets and pure-ACK elements
// of the connections that ended since the last time (ends, and what waits
// in d.ended). Elements a newer connection on the same ports holds stay
// (Engine.Unowned): this goroutine adds every element, so one asked for
// after the check is added after the deletion.
func (d *datapath) forget(ends []ipvs.Ended) []ipvs.Ended {
drain:
	for len(ends) < 256 {
		select {
		case x := <-d.ended:
			ends = append(ends, x)
		default:
			break drain
		}
	}
	if len(ends) == 0 {
		return ends
	}
	for i, x := range ends {
		ends[i] = d.engine.Unowned(x)
	}
	if err := d.ruleset.ForgetConns(d.conn, ends); err != nil {
		d.log.Warn("elements of ended connections not deleted; they time out", "count", len(ends), "err", err)
	}
	return ends
}

// commit sends the stream offsets and channel elements of the batch's
// packets in one nftables batch: a length-changing 227 needs both, and each
// batch costs a round trip through the kernel's nftables transaction. False
// when that failed (an element to replace timed out, a stale channel holds
// a key): then nothing of it is in, and storeOffsets and OpenChannels sort
// it out.
func (d *datapath) commit(batch []*pending, open []ipvs.Channel) bool {
	n := 0
	for _, p := range batch {
		if o := p.offsets; o.Store {
			d.ruleset.StoreOffsets(d.conn, o.Client, o.VIP, o.Off, o.Replace)
			n++
		}
	}
	if len(open) > 0 {
		if err := d.ruleset.AddChannels(d.conn, open); err != nil {
			d.log.Error("data channels not opened", "count", len(open), "err", err)
		}
	}
	return n == 0 && len(open) == 0 || d.conn.Flush() == nil
}

// storeOffsets records the stream offsets the batch's packets changed, in
// one nftables batch; where that fails (an element to replace timed out),
// one by one.
func (d *datapath) storeOffsets(batch []*pending) {
	n := 0
	for _, p := range batch {
		if o := p.offsets; o.Store {
			d.ruleset.StoreOffsets(d.conn, o.Client, o.VIP, o.Off, o.Replace)
			n++
		}
	}
	if n == 0 || d.conn.Flush() == nil {
		return
	}
	for _, p := range batch {
		if o := p.offsets; o.Store {
			d.ruleset.StoreOffsets(d.conn, o.Client, o.VIP, o.Off, o.Replace)
			err := d.conn.Flush()
			if err != nil && o.Replace {
				d.ruleset.StoreOffsets(d.conn, o.Client, o.VIP, o.Off, false)
				err = d.conn.Flush()
			}
			if err != nil {
				d.log.Warn("stream offsets not recorded; a restart would lose them", "client", o.Client, "vip", o.VIP, "err", err)
			}
		}
	}
}
