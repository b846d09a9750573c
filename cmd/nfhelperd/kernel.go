package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/google/nftables"
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

// The kernel datapath (kernel.DatapathKernel): helped connections carry a
// userspace conntrack helper, which queues their packets to one queue after
// the scheduling queues; verdicts carry NFQA_CT so that the kernel's seqadj
// corrects sequence numbers; data channels are conntrack expectations with
// NAT, created before the announcing packet's verdict.

// helperName is the userspace conntrack helper the daemon registers (one
// registration per address family).
const helperName = "nfhelper-ftp"

// chooser picks the datapath for a configuration: the kernel one where
// the kernel has every part of it and the configuration no add-on helpers
// (behind the user's SNAT their channels need the compat datapath's maps).
func chooser(cfg *config.Config) func(kernel.Features) (string, error) {
	auto := len(cfg.Helpers) == 0
	return func(f kernel.Features) (string, error) {
		dp, err := kernel.Choose(f, os.Getenv(kernel.EnvDatapath), auto)
		if err == nil && dp == kernel.DatapathKernel && !auto {
			return "", fmt.Errorf("%s=kernel: %w", kernel.EnvDatapath, errAddonsKernel)
		}
		return dp, err
	}
}

// errAddonsKernel: the kernel datapath does not run add-on helpers.
var errAddonsKernel = errors.New("add-on helpers (helpers:) need the compat datapath: restart without them, or with the datapath probing chooses")

// helperPolicy is the expectation policy for services: the most channels
// and the longest timeout any of them allows (the engine enforces each
// service's own limit).
func helperPolicy(services []*ipvs.Service) kernel.ExpectPolicy {
	p := kernel.ExpectPolicy{Name: "ftp", MaxExpected: 1, Timeout: 300}
	for _, s := range services {
		p.MaxExpected = max(p.MaxExpected, uint32(s.Policy.MaxChannels))
		p.Timeout = max(p.Timeout, uint32(s.Policy.ChannelTimeout/time.Second))
	}
	return p
}

// kernelHelper is the registered helper.
type kernelHelper struct {
	ch *kernel.Cthelper
}

// registerHelper registers the helper for both families, replacing a stale
// registration of an earlier run.
func registerHelper(queue uint16, policy kernel.ExpectPolicy) (*kernelHelper, error) {
	ch, err := kernel.DialCthelper()
	if err != nil {
		return nil, err
	}
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		err := ch.Register(kernel.Helper{
			Name: helperName, Family: fam, Proto: unix.IPPROTO_TCP, Queue: uint32(queue),
			PrivLen: kernel.StateLen, Enabled: true, Policies: []kernel.ExpectPolicy{policy},
		})
		if err != nil {
			ch.Close()
			return nil, err
		}
	}
	return &kernelHelper{ch: ch}, nil
}

// unregister removes the helper; the table's ct helper object, which holds
// it, must be gone first.
func (h *kernelHelper) unregister() error {
	var errs []error
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		if err := h.ch.Unregister(helperName, fam, unix.IPPROTO_TCP); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err)
		}
	}
	h.ch.Close()
	return errors.Join(errs...)
}

// seqAdjuster answers with an NFQA_CT, for the kernel's seqadj.
type seqAdjuster interface {
	AcceptSeqAdj(id uint32, pkt []byte, ct []byte) error
}

// flusher sends the verdicts it collected.
type flusher interface{ Flush() error }

// kernelHandler is the helper queue's per-packet path.
func kernelHandler(q verdicter, num uint16, e *ipvs.Engine, dp *datapath, mx *metrics.Metrics, log *slog.Logger) ctHandler {
	w, stats := e.NewWorker(), &e.Stats
	return func(id uint32, pkt []byte, mark uint32, ctAttrs []byte) {
		start := time.Now()
		defer func() {
			if r := recover(); r != nil {
				stats.Panics.Add(1)
				log.Error("worker panic; packet accepted unmodified", "panic", r, "total", stats.Panics.Load())
				q.Accept(id, false, 0, nil)
			}
		}()
		ct, err := kernel.ParseConntrack(ctAttrs)
		if err != nil {
			log.Warn("queued packet's conntrack attributes", "err", err)
		}
		ours := ct.Helper == helperName
		if ours && len(ct.HelperInfo) > 0 {
			restoreFromHelperData(e, ct, log)
		}
		v := w.Process(pkt, mark)
		mx.CountVerdict(num, v)
		if v.SeqAdj != nil {
			// After the verdicts before (the kernel maps each packet by
			// the records at its verdict), before this one's.
			if f, ok := q.(flusher); ok {
				if err := f.Flush(); err != nil {
					log.Warn("verdicts", "err", err)
				}
			}
			// (By direction: ipvs.FromClient is kernel.DirOriginal.)
			if err := kernel.SetSeqAdj(dp.ctnl, ct.Orig, *v.SeqAdj); err != nil {
				stats.HelperErrors.Add(1)
				log.Warn("seqadj", "err", err)
			}
		}
		p := &pending{q: q, id: id, drop: v.Drop, setMark: v.SetMark, mark: v.Mark, start: start, pkt: v.Packet}
		resized := v.Packet != nil && len(v.Packet) != len(pkt)
		switch info := stateBytes(v.Kernel); {
		case resized && !v.SeqAdjDiff:
			// No NFQA_CT: with it the kernel would record this length
			// change, which its records already hold.
		case ours && info != nil && (resized || !bytes.Equal(info, ct.HelperInfo[:min(len(ct.HelperInfo), len(info))])):
			// The connection's helper data, and with a new length the
			// kernel's seqadj: both through NFQA_CT.
			p.ct, _ = kernel.VerdictCT(helperName, info)
		case resized:
			// The connection's mark as it is: the smallest NFQA_CT that
			// has the kernel record the length change.
			p.ct, _ = kernel.VerdictCTMark(ct.Mark)
		}
		// The expectations are made here, before the verdict, never handed
		// to the datapath: this reader is the only one of the helper's
		// queue, so no later packet of the connection (a retransmission of
		// this very announcement, released with its recorded edits) can
		// reach the client before the kernel expects its data connection.
		for _, x := range expectations(v.Open, ct, log) {
			if err := kernel.ReplaceExpect(dp.ct, dp.ctnl, x); err != nil {
				log.Error("data channel not opened", "err", err)
			}
		}
		if err := p.verdict(); err != nil {
			log.Warn("verdict", "err", err)
		}
		mx.ObserveVerdict(time.Since(start))
	}
}

// stateBytes is the helper data for k; nil without state.
func stateBytes(k *ipvs.KernelState) []byte {
	if k == nil {
		return nil
	}
	s := kernel.HelperState{Next: k.Next, Helper: k.Helper}
	if k.Synced[ipvs.FromClient] {
		s.Flags |= kernel.StateValid
	}
	if k.Synced[ipvs.FromServer] {
		s.Flags |= kernel.StateReplyValid
	}
	if k.Stopped {
		s.Flags |= kernel.StateStopped
	}
	return s.Encode()
}

// restoreFromHelperData adopts a connection the kernel's helper data
// describes and the engine does not know: the daemon restarted while it ran.
func restoreFromHelperData(e *ipvs.Engine, ct kernel.Conntrack, log *slog.Logger) {
	client, vip, server := ct.Orig.Src, ct.Orig.Dst, ct.Reply.Src
	if c, _ := e.Table.Lookup(client, server); c != nil {
		return
	}
	st, err := kernel.DecodeState(ct.HelperInfo)
	if err != nil || st.Flags&(kernel.StateValid|kernel.StateReplyValid) == 0 {
		return
	}
	if ct.Status&kernel.StatusSeqAdjust != 0 && !ct.HasSeqAdj {
		log.Warn("connection not restored: the kernel did not send its seqadj records", "client", client, "vip", vip)
		return
	}
	// (ct.SeqAdj is by kernel direction, the same order as ipvs.Direction.)
	k := ipvs.KernelState{Next: st.Next, Stopped: st.Flags&kernel.StateStopped != 0, Helper: st.Helper, SeqAdj: ct.SeqAdj}
	k.Synced[ipvs.FromClient] = st.Flags&kernel.StateValid != 0
	k.Synced[ipvs.FromServer] = st.Flags&kernel.StateReplyValid != 0
	if e.AdoptKernel(client, vip, server, k) {
		log.Info("connection restored from the kernel's helper data", "client", client, "vip", vip, "server", server)
	}
}

// expectations are the conntrack expectations for channels announced on
// the connection ct: the data connection is NATed like its master
// (nat-follow-master), to the real server's announced port (passive) or
// from the VIP to the client's (active).
func expectations(chs []ipvs.Channel, ct kernel.Conntrack, log *slog.Logger) []kernel.Expectation {
	var out []kernel.Expectation
	for _, ch := range chs {
		if ch.Kind == ipvs.ChannelWatch {
			continue // add-on servers: the helper queues their packets anyway
		}
		if !ct.Orig.Src.IsValid() {
			log.Warn("data channel without its control connection's conntrack entry", "channel", ch)
			continue
		}
		if ch.NAT.IsValid() {
			log.Warn("data channel behind the user's SNAT: not supported by the kernel datapath yet", "channel", ch)
			continue
		}
		e := kernel.Expectation{Master: ct.Orig, NAT: true}
		switch ch.Kind {
		case ipvs.ChannelPassive:
			client := netip.AddrPortFrom(ch.Client.Addr(), 0)
			e.Dir = kernel.DirOriginal
			e.Tuple = kernel.Tuple{Src: client, Dst: ch.VIP, Proto: unix.IPPROTO_TCP}
			e.NATTo = kernel.Tuple{Src: ch.Server, Dst: client, Proto: unix.IPPROTO_TCP}
		case ipvs.ChannelActive:
			server := netip.AddrPortFrom(ch.Server.Addr(), 0)
			e.Dir = kernel.DirReply
			e.Tuple = kernel.Tuple{Src: server, Dst: ch.Client, Proto: unix.IPPROTO_TCP}
			e.NATTo = kernel.Tuple{Src: ch.Client, Dst: server, Proto: unix.IPPROTO_TCP}
		default:
			continue
		}
		out = append(out, e)
	}
	return out
}

// openHelperQueue binds the helper's queue, with conntrack attributes.
func openHelperQueue(num uint16) (*nfq.Queue, error) {
	q, err := nfq.Open(nfq.Config{Num: num, MaxLen: 4096, Flags: nfq.FlagFailOpen | nfq.FlagConntrack})
	if err != nil {
		return nil, fmt.Errorf("helper queue: %w", err)
	}
	return q, nil
}

// dialConntrack is the datapath's ctnetlink socket for expectations.
func dialConntrack() (*conntrack.Conn, error) {
	c, err := conntrack.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("ctnetlink: %w", err)
	}
	return c, nil
}

// ctHandler is a queue handler that gets the packet's NFQA_CT contents.
type ctHandler func(id uint32, pkt []byte, mark uint32, ct []byte)

// startHelperQueue runs the helper queue's reader.
func startHelperQueue(ctx context.Context, q *nfq.Queue, h ctHandler) (<-chan error, error) {
	return q.Run(ctx, func(m *nfq.Message) { h(m.ID, m.Payload, m.Mark, m.CT) })
}

// ctQueue answers the helper queue's packets: a rewritten payload
// goes back with an NFQA_CT that names the connection's helper, so that
// the kernel's seqadj records the length change.
type ctQueue struct {
	*nfq.Queue
}

func (q ctQueue) AcceptSeqAdj(id uint32, pkt []byte, ct []byte) error {
	return q.SetVerdict(&nfq.Verdict{ID: id, Verdict: nfq.VerdictAccept, Payload: pkt, CT: ct})
}

// queueExprName is how spec's rules queue: kernel.QueueNative or
// kernel.QueueXt.
func queueExprName(spec *nft.Spec) string {
	if spec.NativeQueue {
		return kernel.QueueNative
	}
	return kernel.QueueXt
}

func boolInt(b bool) uint16 {
	if b {
		return 1
	}
	return 0
}

// checkKernelFeatures is --check: the kernel's features, the datapath a
// start would choose and the ruleset's visible mistakes, printed to w; 1
// if a check failed. It changes nothing that outlives it (see kernel.Probe).
func checkKernelFeatures(w io.Writer, cfg *config.Config) int {
	conn, err := nftables.New()
	if err != nil {
		fmt.Fprintln(w, "FAIL  nftables", err)
		return 1
	}
	f := kernel.Probe(conn)
	chosen, err := chooser(cfg)(f)
	r := &ctl.CheckReport{Checks: ctl.KernelChecks(f, "", chosen, err)}
	mistakes, err := ctl.LiveRulesetMistakes(conn, tableName)
	if err != nil {
		r.Checks = append(r.Checks, ctl.Check{Name: "ruleset", Status: ctl.CheckInfo, Detail: err.Error()})
	}
	r.Checks = append(r.Checks, mistakes...)
	if len(mistakes) == 0 && err == nil {
		r.Checks = append(r.Checks, ctl.Check{Name: "ruleset", Status: ctl.CheckOK, Detail: "no mistakes found"})
	}
	ctl.WriteCheck(w, r)
	if r.Failed() {
		return 1
	}
	return 0
}
