package nfq

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Queue is one bound NFQUEUE number: a netlink socket with one reader.
type Queue struct {
	Num uint16
	nf  *nfqueue.Nfqueue

	// ReadErrors counts receive errors the reader survived (ENOBUFS: the
	// kernel dropped messages because the socket buffer was full).
	ReadErrors atomic.Uint64
}

// Handler receives one queued packet: its id for the verdict, the bytes from
// the IP header on (valid only during the call) and its mark.
type Handler func(id uint32, pkt []byte, mark uint32)

// OpenQueue binds queue number num. Fail-open: when the queue is full the
// kernel accepts packets instead of dropping them.
func OpenQueue(num uint16, maxLen uint32) (*Queue, error) {
	return openQueue(num, maxLen, nfqueue.NfQaCfgFlagFailOpen)
}

// OpenConntrackQueue is OpenQueue with conntrack attributes: each packet
// comes with its connection's NFQA_CT (StartCT's handler gets it), and
// AcceptSeqAdj can answer with one. Kernels without
// CONFIG_NETFILTER_NETLINK_GLUE_CT refuse it (EOPNOTSUPP).
func OpenConntrackQueue(num uint16, maxLen uint32) (*Queue, error) {
	return openQueue(num, maxLen, nfqueue.NfQaCfgFlagFailOpen|nfqueue.NfQaCfgFlagConntrack)
}

func openQueue(num uint16, maxLen, flags uint32) (*Queue, error) {
	nf, err := nfqueue.Open(&nfqueue.Config{
		NfQueue:      num,
		MaxPacketLen: 0xffff,
		MaxQueueLen:  maxLen,
		Copymode:     nfqueue.NfQnlCopyPacket,
		Flags:        flags,
		AfFamily:     unix.AF_UNSPEC,
	})
	if err != nil {
		return nil, fmt.Errorf("open nfqueue %d: %w", num, err)
	}
	// ENOBUFS would otherwise end the reader; losing a message only costs
	// that packet's verdict, which the kernel then drops or fails open.
	if err := nf.SetOption(netlink.NoENOBUFS, true); err != nil {
		nf.Close()
		return nil, fmt.Errorf("nfqueue %d: set NoENOBUFS: %w", num, err)
	}
	if err := nf.Con.SetReadBuffer(4 << 20); err != nil {
		nf.Close()
		return nil, fmt.Errorf("nfqueue %d: read buffer: %w", num, err)
	}
	return &Queue{Num: num, nf: nf}, nil
}

// Start binds the queue and reads packets in the background, calling h for
// each, until ctx ends or the socket fails: the channel then delivers nil
// or the error. Binding fails when another process holds the queue.
func (q *Queue) Start(ctx context.Context, h Handler) (<-chan error, error) {
	return q.StartCT(ctx, func(id uint32, pkt []byte, mark uint32, _ []byte) { h(id, pkt, mark) })
}

// CTHandler is a Handler that also gets the contents of the packet's
// NFQA_CT (nil without one; valid only during the call).
type CTHandler func(id uint32, pkt []byte, mark uint32, ct []byte)

// StartCT is Start with a CTHandler.
func (q *Queue) StartCT(ctx context.Context, h CTHandler) (<-chan error, error) {
	failed := make(chan error, 1)
	err := q.nf.RegisterWithErrorFunc(ctx, func(a nfqueue.Attribute) int {
		if a.PacketID == nil || a.Payload == nil {
			return 0
		}
		var mark uint32
		if a.Mark != nil {
			mark = *a.Mark
		}
		var ct []byte
		if a.Ct != nil {
			ct = *a.Ct
		}
		h(*a.PacketID, *a.Payload, mark, ct)
		return 0
	}, func(err error) int {
		if ctx.Err() != nil || errors.Is(err, os.ErrClosed) {
			failed <- nil
			return 1
		}
		var opErr *netlink.OpError
		if errors.As(err, &opErr) && (opErr.Timeout() || errors.Is(opErr.Err, unix.ENOBUFS)) {
			q.ReadErrors.Add(1)
			return 0
		}
		failed <- fmt.Errorf("nfqueue %d: receive: %w", q.Num, err)
		return 1
	})
	if errors.Is(err, unix.EPERM) {
		// The kernel's answer when another socket has the queue.
		return nil, fmt.Errorf("bind nfqueue %d: held by another process (another nfhelperd?), or CAP_NET_ADMIN missing: %w", q.Num, err)
	}
	if err != nil {
		return nil, fmt.Errorf("bind nfqueue %d: %w", q.Num, err)
	}
	done := make(chan error, 1)
	go func() {
		select {
		case <-ctx.Done():
			done <- nil
		case err := <-failed:
			done <- err
		}
	}()
	return done, nil
}

// Accept lets the packet go on, with a new mark and new bytes when given.
func (q *Queue) Accept(id uint32, setMark bool, mark uint32, pkt []byte) error {
	var err error
	switch {
	case setMark && pkt != nil:
		err = q.nf.SetVerdictModPacketWithMark(id, nfqueue.NfAccept, int(mark), pkt)
	case setMark:
		err = q.nf.SetVerdictWithMark(id, nfqueue.NfAccept, int(mark))
	case pkt != nil:
		err = q.nf.SetVerdictModPacket(id, nfqueue.NfAccept, pkt)
	default:
		err = q.nf.SetVerdict(id, nfqueue.NfAccept)
	}
	if err != nil {
		return fmt.Errorf("nfqueue %d: verdict for packet %d: %w", q.Num, id, err)
	}
	return nil
}

// AcceptSeqAdj lets the packet go on with new bytes and an NFQA_CT that
// sets the connection mark to connMark (pass the mark the packet's NFQA_CT
// showed): a verdict with NFQA_CT makes the kernel record the payload's
// length change in the connection's seqadj.
func (q *Queue) AcceptSeqAdj(id uint32, pkt []byte, connMark uint32) error {
	if err := q.nf.SetVerdictModPacketWithConnMark(id, nfqueue.NfAccept, int(connMark), pkt); err != nil {
		return fmt.Errorf("nfqueue %d: verdict for packet %d: %w", q.Num, id, err)
	}
	return nil
}

// Drop discards the packet.
func (q *Queue) Drop(id uint32) error {
	if err := q.nf.SetVerdict(id, nfqueue.NfDrop); err != nil {
		return fmt.Errorf("nfqueue %d: drop packet %d: %w", q.Num, id, err)
	}
	return nil
}

// Close unbinds the queue; packets still queued fail open.
func (q *Queue) Close() error { return q.nf.Close() }
