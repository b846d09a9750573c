package daemon

import (
	"context"
	"log/slog"

	"github.com/google/nftables"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
	"github.com/nfhelper/nfhelper/nfq"
	"github.com/nfhelper/nfhelper/nft"
)

// datapath is how what a verdict asks beyond itself (data channels, stream
// offsets, sequence adjustment) reaches the kernel. One is chosen at start
// (newDatapath) and never changes: compat puts it in the table's nftables
// maps (compat.go), kernel in conntrack (kernel.go). Its methods are listed
// in the order the daemon's lifecycle calls them.
type datapath interface {
	// name is kernel.DatapathCompat or kernel.DatapathKernel.
	name() string
	// options sets the engine's options that concern the datapath.
	options(o *ipvs.Options)
	// attach gives the datapath the engine, once built, and has the
	// conntrack follower tell it what it needs.
	attach(e *ipvs.Engine, f *conntrackFollower)
	// shape makes spec (a start's or a reload's) the datapath's ruleset.
	shape(spec *nft.Spec)
	// allows refuses a configuration this datapath cannot run (reload).
	allows(cfg *config.Config) error
	// takeOver takes back what a predecessor left: the connections of a
	// daemon that crashed or handed over. It runs before the queues are
	// bound.
	takeOver(spec *nft.Spec)
	// openQueues binds (or adopts, from inherited) the datapath's own
	// queues, numbered from first on, after the scheduling queues.
	openQueues(first uint16, inherited map[uint16]int) ([]*nfq.Queue, error)
	// dial opens the sockets the datapath writes the kernel through.
	dial() error
	// register readies the kernel for the ruleset about to be installed
	// through conn (which may remove a stale table on the way).
	register(conn *nftables.Conn, spec *nft.Spec) error

	// inspect reads what the kernel tells of a queued packet's connection
	// (NFQA_CT; nil on queues bound without it), before its worker sees the
	// packet.
	inspect(attrs []byte) kernel.Conntrack
	// answer gives packet id, which the worker turned into v, its verdict,
	// after whatever v asks of the kernel; false when the packet waits in
	// the datapath, which then observes its latency itself.
	answer(h *handler, id uint32, pkt []byte, v ipvs.Verdict, ct kernel.Conntrack) (answered bool)
	// run does the datapath's background work until ctx ends; ruleset is
	// the table register readied the kernel for.
	run(ctx context.Context, ruleset *nft.Ruleset)

	// idle waits until every packet that waits in the datapath has its
	// verdict (a hand-over).
	idle()
	// handOver passes on to the successor what the queues' sockets and the
	// table do not carry.
	handOver()
	// unregister undoes what register did for this daemon alone (the
	// kernel datapath's helper registration is kernel-wide: it stays); the
	// table must be gone.
	unregister()
	// close closes what dial opened, once nothing uses it.
	close()
}

// newDatapath is the datapath named name (kernel.Choose's answer).
func newDatapath(name string, log *slog.Logger) datapath {
	if name == kernel.DatapathKernel {
		return &kernelPath{log: log}
	}
	return &compatPath{log: log, reqs: make(chan *pending, 1024), ended: make(chan ipvs.Ended, 4096), used: make(chan ipvs.Channel, 4096), adopted: make(chan adoption, 4096)}
}
