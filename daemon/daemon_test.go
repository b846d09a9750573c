package daemon

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
	"github.com/nfhelper/nfhelper/metrics"
	"github.com/nfhelper/nfhelper/nft"
)

// TestDatapathChoice: the datapath kernel.Choose names is the one the
// daemon runs, and each shapes the engine, the ruleset and reloads its own
// way.
func TestDatapathChoice(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	addOns := &config.Config{Helpers: []config.AddOn{{}}}
	for _, c := range []struct {
		name         string
		seqAdj       bool
		ctHelper     string
		refuseAddOns bool
	}{
		{kernel.DatapathCompat, false, "", false},
		{kernel.DatapathKernel, true, helperName, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			dp := newDatapath(c.name, log)
			if dp.name() != c.name {
				t.Fatalf("datapath %q for %q", dp.name(), c.name)
			}
			var opts ipvs.Options
			dp.options(&opts)
			if kernelSeqAdj := opts.Datapath == ipvs.DatapathKernel; kernelSeqAdj != c.seqAdj {
				t.Errorf("engine's datapath %v", opts.Datapath)
			}
			e, err := ipvs.NewEngine(nil, opts)
			if err != nil {
				t.Fatal(err)
			}
			f := &conntrackFollower{engine: e}
			dp.attach(e, f)
			if compat := !c.seqAdj; (opts.OnEnded != nil) != compat || (f.used != nil) != compat {
				t.Errorf("engine tells of ended connections: %v, conntrack of used channels: %v; want %v", opts.OnEnded != nil, f.used != nil, compat)
			}
			spec := &nft.Spec{}
			dp.shape(spec)
			if spec.CtHelper != c.ctHelper {
				t.Errorf("ruleset's ct helper %q, want %q", spec.CtHelper, c.ctHelper)
			}
			if err := dp.allows(addOns); (err != nil) != c.refuseAddOns {
				t.Errorf("reload with add-on helpers: %v", err)
			}
		})
	}
}

// fakeDatapath records the lifecycle calls a daemon makes, each with what
// state says at the time, where set.
type fakeDatapath struct {
	compatPath
	calls []string
	state func() string
}

func (f *fakeDatapath) record(call string) {
	if f.state != nil {
		call += " (" + f.state() + ")"
	}
	f.calls = append(f.calls, call)
}

func (f *fakeDatapath) idle()       { f.record("idle") }
func (f *fakeDatapath) handOver()   { f.record("handOver") }
func (f *fakeDatapath) unregister() { f.record("unregister") }
func (f *fakeDatapath) close()      { f.record("close") }
func (f *fakeDatapath) run(ctx context.Context, _ *nft.Ruleset) {
	<-ctx.Done()
	f.record("run ended")
}

// started is a daemon on dp, its start done as far as the lifecycle's
// teardown cares: the background work runs.
func started(t *testing.T, dp *fakeDatapath, log *slog.Logger) *Daemon {
	t.Helper()
	e, err := ipvs.NewEngine(nil, ipvs.Options{MarkMask: markMask})
	if err != nil {
		t.Fatal(err)
	}
	d := New(&config.Config{}, Options{Log: log})
	d.dp, d.engine = dp, e
	d.ctx, d.cancel = context.WithCancel(context.Background())
	_, d.stopReading = context.WithCancel(d.ctx)
	d.background.Go(func() { dp.run(d.ctx, nil) })
	return d
}

// TestHandOverOrder: a hand-over waits for the datapath's held packets
// before it takes the queue sockets, ends the background work before the
// datapath passes its state on, and leaves the helper registered for the
// successor.
func TestHandOverOrder(t *testing.T) {
	var logs bytes.Buffer
	dp := &fakeDatapath{}
	d := started(t, dp, slog.New(slog.NewTextHandler(&logs, nil)))
	if inherit := d.HandOver(); inherit == nil || len(inherit) != 0 {
		t.Errorf("sockets handed over: %v, want none (no queues)", inherit)
	}
	want := "idle, run ended, close, handOver"
	if got := strings.Join(dp.calls, ", "); got != want {
		t.Errorf("calls %s, want %s", got, want)
	}
	if !strings.Contains(logs.String(), `msg="handing over"`) || strings.Contains(logs.String(), "msg=stopping") {
		t.Errorf("log:\n%s", logs.String())
	}
}

// TestKernelHandlerRecoversPanics: the kernel datapath's queues share the
// per-packet path's recovery: the packet goes on unmodified.
func TestKernelHandlerRecoversPanics(t *testing.T) {
	var stats ipvs.Stats
	q := &fakeQueue{}
	h := &handler{q: q, num: 101, stats: &stats, dp: newDatapath(kernel.DatapathKernel, slog.New(slog.NewTextHandler(io.Discard, nil))),
		mx: metrics.New(nil, nil, nil), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	h.handle(7, []byte{0x45}, 0, nil) // no worker: a panic
	if len(q.accepted) != 1 || len(q.altered) != 0 || len(q.marks) != 0 || stats.Panics.Load() != 1 {
		t.Errorf("accepted %v altered %v marks %v, panics %d", q.accepted, q.altered, q.marks, stats.Panics.Load())
	}
}

// TestVerdictCT: the NFQA_CT a kernel datapath verdict carries.
func TestVerdictCT(t *testing.T) {
	state := &ipvs.KernelState{Synced: [2]bool{true, true}, Next: [2]uint32{1, 2}}
	info := stateBytes(state)
	ours := kernel.Conntrack{Helper: helperName, HelperInfo: info, Mark: 7}
	withHelper, _ := kernel.VerdictCT(helperName, info)
	withMark, _ := kernel.VerdictCTMark(7)
	longer := make([]byte, 12)
	for _, c := range []struct {
		name string
		v    ipvs.Verdict
		ct   kernel.Conntrack
		want []byte
	}{
		{"unchanged", ipvs.Verdict{Kernel: state}, ours, nil},
		{"resized, recorded already", ipvs.Verdict{Packet: longer}, ours, nil},
		{"resized, ours", ipvs.Verdict{Packet: longer, SeqAdjDiff: true, Kernel: state}, ours, withHelper},
		{"new helper data", ipvs.Verdict{Kernel: state}, kernel.Conntrack{Helper: helperName}, withHelper},
		{"resized, not ours", ipvs.Verdict{Packet: longer, SeqAdjDiff: true}, kernel.Conntrack{Mark: 7}, withMark},
	} {
		if got := verdictCT(10, &c.v, c.ct); !bytes.Equal(got, c.want) {
			t.Errorf("%s: NFQA_CT %x, want %x", c.name, got, c.want)
		}
	}
}
