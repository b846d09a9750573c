package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/config"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
	"github.com/nfhelper/nfhelper/nfq"
	"github.com/nfhelper/nfhelper/nft"
)

// kernelPath is the kernel datapath (kernel.DatapathKernel): helped
// connections carry a userspace conntrack helper, which queues their
// packets to one queue after the scheduling queues; verdicts carry NFQA_CT
// so that the kernel's seqadj corrects sequence numbers; data channels are
// conntrack expectations with NAT, created before the announcing packet's
// verdict. Every packet is answered at once.
type kernelPath struct {
	log    *slog.Logger
	engine *ipvs.Engine
	// helperQueue is the helper's queue number.
	helperQueue uint16
	ct          *conntrack.Conn // expectations
	ctnl        *netlink.Conn   // seqadj records
	registered  bool            // the helper (unregister has something to do)
}

// helperName is the userspace conntrack helper the daemon registers (one
// registration per address family).
const helperName = "nfh-ftp"

// errAddonsKernel: the kernel datapath does not run add-on helpers.
var errAddonsKernel = errors.New("add-on helpers (helpers:) need the compat datapath: restart without them, or with the datapath probing chooses")

func (k *kernelPath) name() string { return kernel.DatapathKernel }

// options: the engine leaves sequence numbers to the kernel's seqadj.
// (Its connections store no offsets and no pure-ACK elements: none end.)
func (k *kernelPath) options(o *ipvs.Options) { o.Datapath = ipvs.DatapathKernel }

func (k *kernelPath) attach(e *ipvs.Engine, _ *conntrackFollower) { k.engine = e }

// shape has the table's helped connections carry the helper.
func (k *kernelPath) shape(spec *nft.Spec) { spec.CtHelper = helperName }

func (k *kernelPath) allows(cfg *config.Config) error {
	if len(cfg.Helpers) > 0 {
		return errAddonsKernel
	}
	return nil
}

// takeOver: connections are taken over from their helper data as their
// packets come (inspect); of a table left by a daemon that did not stop
// cleanly (or handed over), only the requests awaiting their answer
// (TFTP: replies4/6) are carried, with the time they have left.
func (k *kernelPath) takeOver(spec *nft.Spec) {
	c, err := nftables.New()
	if err == nil {
		spec.Carried, err = nft.ReadStaleReplies(c, spec.Table)
	}
	switch {
	case err != nil:
		k.log.Warn("requests awaiting their answer not taken over", "err", err)
	case spec.Carried != nil:
		k.log.Info("took over a stale table's requests awaiting their answer", "elements", spec.Carried.Len())
	}
}

// openQueues binds the helper's queue, with conntrack attributes.
func (k *kernelPath) openQueues(first uint16, inherited map[uint16]int) ([]*nfq.Queue, error) {
	q, err := openQueue(nfq.Config{Num: first, MaxLen: 4096, Flags: nfq.FlagFailOpen | nfq.FlagConntrack}, inherited)
	if err != nil {
		return nil, fmt.Errorf("helper queue: %w", err)
	}
	k.helperQueue = first
	return []*nfq.Queue{q}, nil
}

// dial opens the ctnetlink sockets for expectations and seqadj records.
func (k *kernelPath) dial() (err error) {
	if k.ct, err = conntrack.Dial(nil); err != nil {
		return fmt.Errorf("ctnetlink: %w", err)
	}
	k.ctnl, err = kernel.DialCtnetlink()
	return err
}

// register registers the helper. A registration already there is adopted
// (kernel.Cthelper.Register): a crashed or stopped earlier run's, whose
// connections keep it, or a daemon's in another network namespace of this
// kernel (registrations are kernel-wide), which goes on using it. A stale
// table is replaced atomically by nft.Install after: removing it first
// would take the NAT hooks away from running connections for a moment.
// Only a registration that cannot be updated (another data length) and
// that a table holds needs the table gone first: ours, if it is the
// holder; the queues are ours, so it is no other daemon of this namespace.
func (k *kernelPath) register(conn *nftables.Conn, spec *nft.Spec) error {
	policy := helperPolicy(k.engine.Services())
	err := k.registerHelper(policy)
	if errors.Is(err, unix.EBUSY) {
		if err := nft.Remove(conn, spec.Table); err != nil {
			return err
		}
		err = k.registerHelper(policy)
	}
	k.registered = err == nil
	return err
}

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

// registerHelper registers the helper for both families, or adopts the
// registrations there.
func (k *kernelPath) registerHelper(policy kernel.ExpectPolicy) error {
	ch, err := kernel.DialCthelper()
	if err != nil {
		return err
	}
	defer ch.Close()
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		h := kernel.Helper{
			Name: helperName, Family: fam, Proto: unix.IPPROTO_TCP, Queue: uint32(k.helperQueue),
			PrivLen: kernel.StateLen, Enabled: true, Policies: []kernel.ExpectPolicy{policy},
		}
		old, err := ch.Register(h)
		if err != nil {
			return err
		}
		k.logAdopted(h, old)
	}
	return nil
}

// logAdopted says what registering h found there (old; nil: nothing).
func (k *kernelPath) logAdopted(h kernel.Helper, old *kernel.Helper) {
	switch {
	case old == nil:
	case old.Queue != h.Queue:
		// The kernel queues every namespace's packets of the helper to
		// its one queue number: a daemon elsewhere reading another one
		// no longer gets them (they pass unhelped).
		k.log.Warn("conntrack helper registration adopted with another queue: registrations are kernel-wide, so a daemon in another network namespace of this kernel must use the same queue numbers",
			"helper", h.Name, "family", h.Family, "queue_was", old.Queue, "queue", h.Queue)
	default:
		k.log.Info("conntrack helper registration adopted (an earlier run's, or a daemon's in another network namespace of this kernel)",
			"helper", h.Name, "family", h.Family, "queue", h.Queue)
	}
}

// unregister leaves the registration, which is kernel-wide: a daemon in
// another network namespace may be using it, and nothing tells whether one
// is (6.1 refuses to remove a helper while another namespace's table
// holds it; upstream since its 2026 helper refcount rework does not, and
// leaves that table's ct helper object a dead helper). Left, it does nothing once no table
// assigns it, and the next start adopts it. (This namespace's connections
// that carry it do not outlive the table: measured on 6.18, a connection
// DNATed by a table is reset at its next packet once the table is gone.)
func (k *kernelPath) unregister() {
	if k.registered {
		k.registered = false
		k.log.Info("conntrack helper registration left in the kernel (kernel-wide)", "helper", helperName)
	}
}

// inspect reads the packet's conntrack entry and adopts the connection its
// helper data describes, if the engine does not know it.
func (k *kernelPath) inspect(attrs []byte) kernel.Conntrack {
	if attrs == nil {
		return kernel.Conntrack{} // a scheduling queue's packet
	}
	ct, err := kernel.ParseConntrack(attrs)
	if err != nil {
		k.log.Warn("queued packet's conntrack attributes", "err", err)
	}
	if ct.Helper == helperName && len(ct.HelperInfo) > 0 {
		takeUp(k.engine, ct, k.log)
	}
	return ct
}

// takeUp hands the engine a connection of the helper it may not know: a
// new one nftables scheduled (its helper data never written: the SYN), or
// one the kernel's helper data describes.
func takeUp(e *ipvs.Engine, ct kernel.Conntrack, log *slog.Logger) {
	st, err := kernel.DecodeState(ct.HelperInfo)
	switch {
	case err != nil:
	case st == kernel.HelperState{} && ct.Status&kernel.StatusSeenReply != 0:
		adoptMidstream(e, ct, log)
	case st == kernel.HelperState{}:
		e.PickUpKernel(ct.Orig.Src, ct.Orig.Dst, ct.Reply.Src)
	default:
		restoreFromHelperData(e, ct, st, log)
	}
}

// answer sets the seqadj records and makes the expectations v asks for,
// then gives the verdict, with NFQA_CT where the kernel is to record a
// length change or the connection's helper data.
func (k *kernelPath) answer(h *handler, id uint32, pkt []byte, v ipvs.Verdict, ct kernel.Conntrack) bool {
	if v.SeqAdj != nil {
		// After the verdicts before (the kernel maps each packet by
		// the records at its verdict), before this one's.
		if err := h.q.Flush(); err != nil {
			k.log.Warn("verdicts", "err", err)
		}
		// (By direction: ipvs.FromClient is kernel.DirOriginal.)
		if err := kernel.SetSeqAdj(k.ctnl, ct.Orig, *v.SeqAdj); err != nil {
			h.stats.HelperErrors.Add(1)
			k.log.Warn("seqadj", "err", err)
		}
	}
	ctAttrs := verdictCT(len(pkt), &v, ct)
	// The expectations are made here, before the verdict, never handed to
	// a background goroutine: this reader is the only one of the helper's
	// queue, so no later packet of the connection (a retransmission of
	// this very announcement, released with its recorded edits) can reach
	// the client before the kernel expects its data connection.
	for _, x := range expectations(v.Open, ct, k.log) {
		if err := kernel.ReplaceExpect(k.ct, k.ctnl, x); err != nil {
			k.log.Error("data channel not opened", "err", err)
		}
	}
	if ctAttrs != nil && !v.Drop && !v.SetMark {
		if err := h.q.AcceptCT(id, v.Packet, ctAttrs); err != nil {
			h.log.Warn("verdict", "err", err)
		}
		if v.Packet != nil && len(v.Packet) != len(pkt) {
			k.reportSeqAdj(h, ct)
		}
		return true
	}
	h.verdict(id, &v)
	return true
}

// reportSeqAdj has the kernel report a connection whose seqadj records a
// verdict just changed, for conntrackd to carry them to a backup router
// (kernel.ReportConntrack). After the verdict is applied: the report
// carries the records as they are then. One round trip per length change
// (a lengthened 227), which is rare.
func (k *kernelPath) reportSeqAdj(h *handler, ct kernel.Conntrack) {
	if err := h.q.Flush(); err != nil {
		k.log.Warn("verdicts", "err", err)
	}
	if err := kernel.ReportConntrack(k.ctnl, ct.Orig); err != nil {
		k.log.Warn("seqadj not reported", "err", err)
		return
	}
	h.stats.SeqAdjReported.Add(1)
}

// verdictCT is the NFQA_CT the verdict v on a packet of inLen bytes of
// connection ct carries; nil: none.
func verdictCT(inLen int, v *ipvs.Verdict, ct kernel.Conntrack) []byte {
	resized := v.Packet != nil && len(v.Packet) != inLen
	var attrs []byte
	switch info := stateBytes(v.Kernel); {
	case resized && !v.SeqAdjDiff:
		// No NFQA_CT: with it the kernel would record this length
		// change, which its records already hold.
	case ct.Helper == helperName && info != nil && (resized || !bytes.Equal(info, ct.HelperInfo[:min(len(ct.HelperInfo), len(info))])):
		// The connection's helper data, and with a new length the
		// kernel's seqadj: both through NFQA_CT.
		attrs, _ = kernel.VerdictCT(helperName, info)
	case resized:
		// The connection's mark as it is: the smallest NFQA_CT that
		// has the kernel record the length change.
		attrs, _ = kernel.VerdictCTMark(ct.Mark)
	}
	return attrs
}

// stateBytes is the helper data for s; nil without state.
func stateBytes(s *ipvs.KernelState) []byte {
	if s == nil {
		return nil
	}
	hs := kernel.HelperState{Next: s.Next, Helper: s.Helper}
	if s.Synced[ipvs.FromClient] {
		hs.Flags |= kernel.StateValid
	}
	if s.Synced[ipvs.FromServer] {
		hs.Flags |= kernel.StateReplyValid
	}
	if s.Stopped {
		hs.Flags |= kernel.StateStopped
	}
	return hs.Encode()
}

// restoreFromHelperData adopts a connection the kernel's helper data
// describes and the engine does not know: the daemon restarted while it ran.
func restoreFromHelperData(e *ipvs.Engine, ct kernel.Conntrack, st kernel.HelperState, log *slog.Logger) {
	client, vip, server := ct.Orig.Src, ct.Orig.Dst, ct.Reply.Src
	if c, _ := e.Table.Lookup(client, server); c != nil || st.Flags&(kernel.StateValid|kernel.StateReplyValid) == 0 {
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

// adoptMidstream adopts a connection of the helper that has seen replies
// but whose helper data is empty, which the engine does not know:
// conntrackd created its entry on this backup router (it carries the
// helper's name and the seqadj records, not the helper data). Its data
// channels announced before the switch are expectations conntrackd
// carries too (ExpectationSync), committed here because this daemon
// registered the helper.
func adoptMidstream(e *ipvs.Engine, ct kernel.Conntrack, log *slog.Logger) {
	client, vip, server := ct.Orig.Src, ct.Orig.Dst, ct.Reply.Src
	if c, _ := e.Table.Lookup(client, server); c != nil {
		return
	}
	if ct.Status&kernel.StatusSeqAdjust != 0 && !ct.HasSeqAdj {
		log.Warn("connection not adopted: the kernel did not send its seqadj records", "client", client, "vip", vip)
		return
	}
	if e.AdoptKernelMidstream(client, vip, server, ct.SeqAdj) {
		log.Debug("connection adopted mid-stream", "client", client, "vip", vip, "server", server)
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

// run has nothing to do: every packet is answered as it comes.
func (k *kernelPath) run(context.Context, *nft.Ruleset) {}

func (k *kernelPath) idle() {}

// handOver has nothing to pass: the connections' helper data hold the
// helpers' states.
func (k *kernelPath) handOver() {}

func (k *kernelPath) close() {
	if k.ct != nil {
		k.ct.Close()
	}
	if k.ctnl != nil {
		k.ctnl.Close()
	}
}
