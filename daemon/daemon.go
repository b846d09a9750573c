// Package daemon runs nfhelperd's lifecycle: it probes the kernel and
// chooses the datapath, opens (or inherits) the queues, starts the
// datapath and the queue readers, installs the ruleset, serves the control
// socket and the metrics, reloads, hands over to a successor in place and
// stops. Each step is a method of Daemon, in the order Start and Stop call
// them.
//
// Where things are:
//   - daemon.go: Daemon, its steps and its teardown.
//   - datapath.go: the datapath interface; compat.go and kernel.go, its two
//     implementations (nftables maps; conntrack expectations and seqadj).
//   - handler.go: the per-packet path every queue runs.
//   - conntrack.go: conntrack's events and lookups for the engine.
//   - restore.go, handover.go: taking over from a crashed predecessor; the
//     hand-over in place (queue sockets, helper states, exec).
//   - services.go: the configuration as engine services and ruleset spec.
//   - health.go, standing.go, control.go, serverconns.go, statefile.go:
//     the health checks, the real servers' standings (health and
//     overrides), nfhelperctl's changes, a server's connections in
//     conntrack (on_down reset, drain), and the state file that keeps them.
//   - check.go: the datapath choice and --check.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/health"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
	"github.com/nfhelper/nfhelper/metrics"
	"github.com/nfhelper/nfhelper/nfq"
	"github.com/nfhelper/nfhelper/nft"
)

// Options are what a Daemon is built with besides its configuration.
type Options struct {
	// ConfigPath is the configuration file, as named on the command line:
	// the control socket reports it, the reload log line names it.
	ConfigPath string
	Log        *slog.Logger
	// StateDir holds the state file (statefile.go); "": none, nothing
	// survives a restart.
	StateDir string
}

// Daemon is one run of nfhelperd: Start, then Reload as often as asked,
// then either Stop or HandOver (and Exec).
type Daemon struct {
	cfg     *config.Config // the one it started with: queues and datapath keep it
	opts    Options
	log     *slog.Logger
	started time.Time

	features kernel.Features
	dp       datapath
	engine   *ipvs.Engine
	alive    *conntrackAlive    // the engine's conntrack lookups: idle checks
	origins  *conntrackAlive    // and the queues' workers' (Options.OriginalDst)
	follower *conntrackFollower // conntrack's events to the engine
	// followingEnds: the follower's new and destroy events run (under mu
	// after the start).
	followingEnds bool
	spec          *nft.Spec
	queues        []*nfq.Queue // the scheduling queues, then the datapath's
	metrics       *metrics.Metrics
	nft           *nftables.Conn // the ruleset's changes
	ruleset       *nft.Ruleset   // nil until installed
	keeper        *keepAlive     // renews the ruleset's liveness element; nil until served
	control       *ctl.Server
	states        *stateFollower

	// mu serializes the changes: reloads, health changes, nfhelperctl's.
	// Their batches on nft must not interleave. It guards what follows.
	mu       sync.Mutex
	running  *config.Config // the configuration in force (reloaded)
	roster   roster
	stopping bool // Stop or HandOver began: no more changes
	monitor  *health.Monitor
	changes  *changeQueue // the monitor's, to followHealth
	notices  chan notice  // to runNotices
	// stateChanges counts the real servers' state changes.
	stateChanges atomic.Uint64
	// vrrpFile is the running configuration's VRRP state file, for status
	// and the metrics to read without mu.
	vrrpFile atomic.Pointer[vrrpFile]

	// ctx ends the background work (Stop, HandOver); readCtx, within it,
	// the queue readers alone, first at a hand-over: what they have not
	// read waits in the sockets for the successor.
	ctx         context.Context
	cancel      context.CancelFunc
	stopReading context.CancelFunc
	readers     sync.WaitGroup
	background  sync.WaitGroup
	failed      chan error // a queue reader's
}

// New is a daemon for cfg; nothing happens until Start.
func New(cfg *config.Config, opts Options) *Daemon {
	return &Daemon{cfg: cfg, opts: opts, log: opts.Log, started: time.Now()}
}

// Start brings the daemon up, step by step (start). Its work goes on until
// Stop or HandOver; when ctx ends, the queue readers and the background
// work end at once, and Stop is left to do. When a step fails, what the
// steps before set up is undone, and the step's error returned.
func (d *Daemon) Start(ctx context.Context) error {
	d.ctx, d.cancel = context.WithCancel(ctx)
	if err := d.start(); err != nil {
		d.close()
		if d.dp != nil {
			d.dp.unregister()
		}
		return err
	}
	d.log.Info("ready", "datapath", d.dp.name(), "queue_expr", queueExprName(d.spec),
		"queues", fmt.Sprintf("%d-%d", d.spec.QueueNum, d.spec.QueueNum+uint16(len(d.queues))-1),
		"services", len(d.spec.Services), "helpers", len(d.spec.AddOns), "table", "inet "+tableName, "socket", d.control.Path())
	return nil
}

// start runs Start's steps in order.
func (d *Daemon) start() error {
	if err := d.chooseDatapath(); err != nil {
		return err
	}
	gone, err := d.newMonitor()
	if err != nil {
		return err
	}
	if err := d.newEngine(); err != nil {
		return err
	}
	// Before the queues: it reads the kernel and changes nothing there.
	d.dp.takeOver(d.spec)
	// Queues are bound before the rules exist: the first queued packet
	// finds a reader, and a second daemon stops here, before it could
	// replace the running one's table.
	if err := d.openQueues(); err != nil {
		return err
	}
	if err := d.dp.dial(); err != nil {
		return err
	}
	if err := d.startReading(); err != nil {
		return err
	}
	if err := d.installRuleset(); err != nil {
		return err
	}
	// Only now, the table ours: a second daemon that stopped at its queues
	// must not rewrite the running one's state.
	for _, c := range gone {
		c.log(d.log)
	}
	d.saveState()
	d.serve()
	return nil
}

// chooseDatapath probes what the kernel has, which decides the datapath
// (with the configuration: see chooser).
func (d *Daemon) chooseDatapath() error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	d.features = kernel.Probe(conn)
	name, err := chooser(d.cfg)(d.features)
	if err != nil {
		return err
	}
	d.dp = newDatapath(name, d.log)
	return nil
}

// newMonitor builds the real servers' roster from the state file and the
// configuration, and the health monitor for it. It returns the overrides
// the file no longer allows, for the start to log.
func (d *Daemon) newMonitor() ([]cleared, error) {
	d.running = d.cfg
	d.setVRRPFile(d.cfg)
	var gone []cleared
	d.roster, gone = d.loadRoster().reconcile(d.cfg, time.Now())
	targets, err := healthTargets(d.cfg, d.roster)
	if err != nil {
		return nil, err
	}
	d.changes, d.notices = newChangeQueue(), make(chan notice, 64)
	d.monitor = health.New(d.changes.add)
	d.monitor.Set(targets)
	return gone, nil
}

// newEngine builds the engine for the configured services, their real
// servers in the roster's standings, and the ruleset's spec for what the
// engine assigned them.
func (d *Daemon) newEngine() (err error) {
	st := d.roster.standings(d.running)
	d.alive, d.origins = &conntrackAlive{}, &conntrackAlive{}
	opts := ipvs.Options{MarkMask: markMask, ReplyMark: nft.ReplyMark, Log: d.log, Alive: d.alive.alive, OriginalDst: d.origins.originalDst}
	d.dp.options(&opts)
	if d.engine, err = ipvs.NewEngine(services(d.cfg, st), opts); err != nil {
		return err
	}
	d.follower = &conntrackFollower{engine: d.engine}
	d.dp.attach(d.engine, d.follower)
	d.spec = specFor(d.cfg, d.engine.Services(), st)
	d.dp.shape(d.spec)
	// Either datapath queues with the native expression where the kernel
	// has it: the xtables target's module cannot be autoloaded from an inet
	// table, so it is used only where nothing else exists, after the probe
	// loaded it (kernel.ProbeXtQueue).
	d.spec.NativeQueue = d.features.QueueExpr() == kernel.QueueNative
	// Fail-open for new sessions: the kernel's FTP helper takes the control
	// connections that bypass the daemon.
	if d.spec.KernelFTP = d.features.KernelFTP == nil; !d.spec.KernelFTP {
		d.log.Warn("fail-open covers control connections only: new FTP sessions cannot transfer while the daemon is down", "err", d.features.KernelFTP)
	}
	// And the kernel's TFTP helper the requests that bypass it: it
	// translates the servers' answers from their new ports.
	if d.spec.KernelTFTP = d.features.KernelTFTP == nil; !d.spec.KernelTFTP && hasReplies(d.spec) {
		d.log.Warn("fail-open sends new TFTP requests to a server, but their answers cannot pass while the daemon is down", "err", d.features.KernelTFTP)
	}
	return nil
}

// openQueues binds the scheduling queues, then the datapath's, or adopts
// the sockets a predecessor handed over (handover.go).
func (d *Daemon) openQueues() error {
	inherited := inheritedQueues()
	for i := range d.spec.QueueTotal {
		q, err := openQueue(nfq.Config{Num: d.spec.QueueNum + i, MaxLen: 4096, Flags: nfq.FlagFailOpen}, inherited)
		if err != nil {
			return err
		}
		d.queues = append(d.queues, q)
	}
	own, err := d.dp.openQueues(d.spec.QueueNum+d.spec.QueueTotal, inherited)
	if err != nil {
		return err
	}
	d.queues = append(d.queues, own...)
	closeUnused(inherited)
	d.metrics = metrics.New(d.engine, d.queues, d.monitor)
	d.metrics.StateChanges = d.StateChanges
	d.metrics.VRRPStateFile = d.vrrpStateFile
	return nil
}

// startReading starts each queue's reader, with its own worker.
func (d *Daemon) startReading() error {
	d.failed = make(chan error, len(d.queues))
	var readCtx context.Context
	readCtx, d.stopReading = context.WithCancel(d.ctx)
	for _, q := range d.queues {
		h := &handler{q: queue{q}, num: q.Num, w: d.engine.NewWorker(), stats: &d.engine.Stats, dp: d.dp, mx: d.metrics, log: d.log}
		done, err := q.Run(readCtx, func(m *nfq.Message) { h.handle(m.ID, m.Payload, m.Mark, m.CT) })
		if err != nil {
			return err
		}
		d.readers.Go(func() {
			if err := <-done; err != nil {
				d.failed <- err
			}
		})
	}
	return nil
}

// installRuleset readies the datapath for the ruleset and installs it,
// replacing a stale table atomically.
func (d *Daemon) installRuleset() (err error) {
	if d.nft, err = nftables.New(); err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if err := d.dp.register(d.nft, d.spec); err != nil {
		return err
	}
	d.ruleset, err = nft.Install(d.nft, d.spec)
	return err
}

// serve starts the background work: the control socket (nfhelperctl),
// the datapath, the engine's expiry, conntrack following, the health
// checks and the metrics endpoint.
func (d *Daemon) serve() {
	ctx := d.ctx
	// The daemon runs without the control socket if it cannot have it.
	configPath, _ := filepath.Abs(d.opts.ConfigPath)
	d.control = &ctl.Server{Engine: d.engine, Servers: d, Log: d.log, Choose: chooser(d.cfg),
		Kernel: &kernelViews{netns: d.follower.netns, ruleset: d.ruleset}, Info: ctl.Info{
			Pid: os.Getpid(), Started: d.started, Datapath: d.dp.name(), Config: configPath, Table: tableName,
			Queues: ctl.Queues{First: d.spec.QueueNum, Count: d.spec.QueueTotal}, QueueExpr: queueExprName(d.spec),
		}}
	d.control.VRRPStateFile = d.vrrpStateFile
	if err := d.control.Listen(ctl.SocketPath()); err != nil {
		d.log.Warn("no control socket; nfhelperctl cannot reach this daemon", "err", err)
	} else {
		d.background.Go(func() {
			if err := d.control.Serve(ctx); err != nil {
				d.log.Warn("control socket", "err", err)
			}
		})
	}
	d.keeper = startKeepAlive(ctx, nft.Heartbeat, keepAliveEvery, d.log)
	// The datapath runs once the rules exist: no packet announced a
	// channel before they did.
	d.background.Go(func() { d.dp.run(ctx, d.ruleset) })
	d.background.Go(func() { d.engine.RunExpiry(time.Second, ctx.Done()) })
	d.followEndsIfNeeded(ctx)
	d.states = &stateFollower{engine: d.engine, follower: d.follower, log: d.log, wg: &d.background}
	d.states.adjust(ctx, d.roster.draining())
	d.background.Go(func() { d.monitor.Run(ctx) })
	d.background.Go(func() { d.followHealth(ctx) })
	d.background.Go(func() { d.runNotices(ctx) })
	if addr := d.cfg.Metrics.Address; addr != "" {
		d.background.Go(func() {
			if err := metrics.Listen(ctx, addr, d.metrics.Handler(), d.cfg.Metrics.AllowRemote); err != nil {
				d.log.Error("metrics endpoint", "address", addr, "err", err)
			}
		})
	}
}

// Failed delivers the error of a queue reader that stopped: the daemon
// cannot go on, and is to Stop.
func (d *Daemon) Failed() <-chan error { return d.failed }

// Reload applies a changed configuration: the kernel's part first, in one
// batch, then the engine's; on any error nothing changes. Servers that stay
// keep their health state and their overrides, unless their entry in the
// file changed (reconcile).
func (d *Daemon) Reload(cfg *config.Config) error {
	if cfg.Queue != d.cfg.Queue {
		return fmt.Errorf("queue settings changed: restart the daemon to apply them")
	}
	if err := d.dp.allows(cfg); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping {
		return errStopping
	}
	ro, gone := d.roster.reconcile(cfg, time.Now())
	targets, err := healthTargets(cfg, ro)
	if err != nil {
		return err
	}
	st := ro.standings(cfg)
	next := services(cfg, st)
	commit, err := d.engine.Prepare(next)
	if err != nil {
		return err
	}
	spec := specFor(cfg, next, st)
	d.dp.shape(spec)
	// Running connections keep reaching the daemon even if their service or
	// server is gone from the file.
	spec.LiveVIPs, spec.LiveServers = d.engine.Live()
	if err := d.ruleset.Update(d.nft, spec); err != nil {
		return err
	}
	commit()
	before := d.roster.standings(d.running)
	// The commit gave the servers that stay their standings too.
	d.roster, d.running = ro, cfg
	d.setVRRPFile(cfg)
	d.monitor.Set(targets)
	for _, c := range gone {
		c.log(d.log)
	}
	d.report(before, st, func(health.Key) string { return "reload" })
	d.saveState()
	d.states.adjust(d.ctx, ro.draining())
	d.followEndsIfNeeded(d.ctx)
	return nil
}

// followEndsIfNeeded starts following conntrack's new and destroy events
// once a service needs them (Engine.NeedsConntrackEnds), and then for the
// daemon's life: a connection of a service a reload removed may still be
// in the table.
func (d *Daemon) followEndsIfNeeded(ctx context.Context) {
	if d.followingEnds || !d.engine.NeedsConntrackEnds() {
		return
	}
	d.followingEnds = true
	d.background.Go(func() {
		// Without events the table's own timeouts still end connections.
		if err := d.follower.followEnds(ctx); err != nil {
			d.control.NoteConntrack(err)
			d.log.Warn("not following conntrack", "err", err)
		}
	})
}

// NoteReload records the outcome of a reload for the control socket's
// status (err nil: applied), the configuration's loading included.
func (d *Daemon) NoteReload(err error) { d.control.NoteReload(err) }

// Stop stops the daemon for good: the table goes, what is queued gets its
// verdict, the rest closes, and the helper goes.
func (d *Daemon) Stop() {
	d.stopChanges()
	// No renewal racing the table's removal.
	d.keeper.halt()
	// Stop queueing first, then answer what is already queued: closing a
	// queue drops the packets still waiting in it.
	if err := nft.Remove(d.nft, tableName); err != nil {
		d.log.Error("cleanup", "err", err)
	}
	drain(d.queues, time.Second)
	d.close()
	// After the table: its ct helper object holds the helper.
	d.dp.unregister()
	d.logServers()
	d.log.Info("stopping", d.engine.Stats.LogAttrs()...)
}

// HandOver stops the daemon for a successor in place (SIGUSR2): the
// readers stop, what they read gets its verdict, and the queue sockets
// come back, for Exec. The table and the helper stay: the successor takes
// them over. Nil: a socket could not be had, and the daemon stopped as
// Stop does instead.
func (d *Daemon) HandOver() map[uint16]*os.File {
	// The state file holds every change made: the successor reads it.
	d.stopChanges()
	d.stopReading()
	d.readers.Wait()
	d.dp.idle() // every packet the readers took has its verdict
	inherit := make(map[uint16]*os.File, len(d.queues))
	for _, q := range d.queues {
		f, err := q.Inherit()
		if err != nil {
			// Without its socket the successor would have to bind the
			// queue anew: stop as usual instead.
			d.log.Error("hand-over", "err", err)
			for _, f := range inherit {
				f.Close()
			}
			d.Stop()
			return nil
		}
		inherit[q.Num] = f
	}
	d.close()
	d.logServers()
	d.dp.handOver()
	d.log.Info("handing over", d.engine.Stats.LogAttrs()...)
	return inherit
}

// stopChanges refuses changes from now on: the table is about to go or to
// pass to a successor.
func (d *Daemon) stopChanges() {
	d.mu.Lock()
	d.stopping = true
	d.mu.Unlock()
}

// close ends the background work, closes the queues and then the
// datapath's sockets: whatever Start got to.
func (d *Daemon) close() {
	d.cancel()
	d.keeper.halt()
	for _, q := range d.queues {
		q.Close()
	}
	d.readers.Wait()
	d.background.Wait()
	if d.alive != nil {
		d.alive.close()
		d.origins.close()
	}
	if d.dp != nil {
		d.dp.close()
	}
}

// logServers logs each real server's counters.
func (d *Daemon) logServers() {
	for _, svc := range d.engine.Services() {
		for _, rs := range svc.Servers {
			d.log.Info("server", "service", svc.Name, "server", rs.Addr, "weight", rs.Weight, "conns", rs.Conns.Load(),
				"active", rs.Active.Load(), "inactive", rs.Inactive.Load(), "packets", rs.Packets.Load(), "bytes", rs.Bytes.Load())
		}
	}
}

// stateFollower runs conntrack's state updates while a least-connection
// scheduler needs them, or while an operator drains a server (its active
// connections, which drain --wait watches, are then right whatever the
// scheduler): they cost several events per connection.
type stateFollower struct {
	engine   *ipvs.Engine
	follower *conntrackFollower
	log      *slog.Logger
	wg       *sync.WaitGroup
	stop     context.CancelFunc
}

func (f *stateFollower) adjust(ctx context.Context, draining bool) {
	need := draining || f.engine.NeedsConntrackStates()
	switch {
	case need && f.stop == nil:
		var fctx context.Context
		fctx, f.stop = context.WithCancel(ctx)
		f.wg.Go(func() {
			if err := f.follower.followStates(fctx); err != nil {
				f.log.Warn("not following conntrack states; active connection counts drift", "err", err)
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

// hasReplies tells whether spec has a service or add-on whose servers
// answer from ports of their own (TFTP).
func hasReplies(spec *nft.Spec) bool {
	for _, svc := range spec.Services {
		if svc.Replies > 0 {
			return true
		}
	}
	for _, ad := range spec.AddOns {
		if ad.Replies > 0 {
			return true
		}
	}
	return false
}
