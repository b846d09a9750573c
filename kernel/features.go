package kernel

import (
	"fmt"
	"strings"

	"github.com/google/nftables"
)

// Datapath names, as logged (`datapath=`) and reported by nfhelperctl.
const (
	// DatapathKernel: a userspace conntrack helper attached by an nft ct
	// helper object queues helped connections; verdicts carry NFQA_CT so the
	// kernel's seqadj corrects sequence numbers; data channels are
	// conntrack expectations with NAT.
	DatapathKernel = "kernel"
	// DatapathCompat: the xtables NFQUEUE target, userspace sequence
	// correction, data channels as nft map elements. Runs on any kernel
	// with NFQUEUE, conntrack, NAT and nf_tables.
	DatapathCompat = "xt-nfqueue+nft-maps"
)

// EnvDatapath overrides the choice, for tests only: "compat" or "kernel".
const EnvDatapath = "NFHELPER_DATAPATH"

// Features is what the probes found: nil where the kernel has the feature,
// else why not.
type Features struct {
	NativeQueue error // nft queue expression
	// XtQueue: the xtables NFQUEUE target, probed (and its module loaded)
	// only where the native expression is missing.
	XtQueue        error
	QueueConntrack error // NFQA_CT in queue messages and verdicts
	Cthelper       error // nfnetlink_cthelper
	Ctnetlink      error // nf_conntrack_netlink
	IPVS           error // informational: not used
	// KernelFTP: the kernel's own FTP helper, which the table attaches
	// to new control connections the daemon did not see (it is down).
	KernelFTP error
	// KernelTFTP: the kernel's own TFTP helper, which the table attaches
	// to new requests to a TFTP service the daemon did not see.
	KernelTFTP error
}

// Probe runs every probe in the calling process's network namespace. It
// changes nothing that outlives it (the native queue probe's table and
// the NFQA_CT probe's queue binding are removed at once) but may make the
// kernel load the modules it asks for: that is how xt_NFQUEUE gets loaded
// where the xtables target must be used (ProbeXtQueue).
func Probe(conn *nftables.Conn) Features {
	f := Features{
		NativeQueue:    ProbeNativeQueue(conn),
		QueueConntrack: ProbeQueueConntrack(),
		Cthelper:       ProbeCthelper(),
		Ctnetlink:      ProbeCtnetlink(),
		IPVS:           ProbeIPVS(ProcIPVS),
		KernelFTP:      ProbeKernelFTP(conn),
		KernelTFTP:     ProbeKernelTFTP(conn),
	}
	if f.NativeQueue != nil {
		f.XtQueue = ProbeXtQueue(conn)
	}
	return f
}

// Feature is one probe's result, for printing.
type Feature struct {
	Name, Detail string
	Err          error
	Needed       bool // the kernel datapath needs it
}

// List is f's results in a fixed order; the xtables target's only where
// it was probed (the native expression is missing).
func (f Features) List() []Feature {
	var xtQueue []Feature
	if f.NativeQueue != nil {
		xtQueue = []Feature{{"xt-queue", "xtables NFQUEUE target (xt_NFQUEUE)", f.XtQueue, false}}
	}
	return append(append([]Feature{
		{"nft-queue", "native nft queue expression (else the xt NFQUEUE target)", f.NativeQueue, false}},
		xtQueue...), []Feature{
		{"queue-conntrack", "NFQA_CT: conntrack in queue messages and verdicts", f.QueueConntrack, true},
		{"cthelper", "userspace conntrack helpers (nfnetlink_cthelper)", f.Cthelper, true},
		{"ctnetlink", "conntrack over netlink (expectations, events)", f.Ctnetlink, true},
		{"ipvs", "kernel IPVS loaded (informational, not used)", f.IPVS, false},
		{"kernel-ftp", "the kernel's FTP helper, for new sessions while the daemon is down", f.KernelFTP, false},
		{"kernel-tftp", "the kernel's TFTP helper, for new requests while the daemon is down", f.KernelTFTP, false},
	}...)
}

// KernelReady is nil when the kernel datapath can run, else the missing
// features joined.
func (f Features) KernelReady() error {
	var missing error
	for _, ft := range f.List() {
		switch {
		case !ft.Needed || ft.Err == nil:
		case missing == nil:
			missing = ft.Err
		default:
			// One line, each still found by errors.Is.
			missing = fmt.Errorf("%w; %w", missing, ft.Err)
		}
	}
	return missing
}

// Queue statements, as logged (`queue_expr=`) and reported by the checks.
const (
	QueueNative = "nft" // the nft queue expression (module nft_queue)
	QueueXt     = "xt"  // the xtables NFQUEUE target (module xt_NFQUEUE)
)

// QueueExpr is how either datapath's rules queue: QueueNative where the
// kernel has the nft queue expression, else QueueXt.
func (f Features) QueueExpr() string {
	if f.NativeQueue == nil {
		return QueueNative
	}
	return QueueXt
}

// QueueExprDetail describes a QueueExpr value for people.
func QueueExprDetail(name string) string {
	if name == QueueNative {
		return "the nft queue expression"
	}
	return "the xtables NFQUEUE target (xt_NFQUEUE)"
}

// QueueReady is nil when the rules can queue packets one way or the other,
// else an error wrapping ErrNoQueue that says why the xtables target failed.
func (f Features) QueueReady() error {
	if f.NativeQueue == nil || f.XtQueue == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrNoQueue, f.XtQueue)
}

// Choose picks the datapath for f. override is EnvDatapath's value: empty
// (choose), "compat" or "kernel" (an error when the kernel lacks what it
// needs). autoKernel says whether an empty override may choose the kernel
// datapath: false while the daemon's kernel datapath is incomplete. Both
// datapaths need a queue statement (QueueReady).
func Choose(f Features, override string, autoKernel bool) (string, error) {
	if err := f.QueueReady(); err != nil {
		return "", err
	}
	switch strings.TrimSpace(override) {
	case "":
		if autoKernel && f.KernelReady() == nil {
			return DatapathKernel, nil
		}
		return DatapathCompat, nil
	case "compat", DatapathCompat:
		return DatapathCompat, nil
	case "kernel":
		if err := f.KernelReady(); err != nil {
			return "", fmt.Errorf("%s=kernel: %w: %w", EnvDatapath, ErrDatapathUnavailable, err)
		}
		return DatapathKernel, nil
	default:
		return "", fmt.Errorf("%s=%q: want compat or kernel", EnvDatapath, override)
	}
}
