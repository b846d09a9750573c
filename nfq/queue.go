package nfq

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Queue is one bound NFQUEUE number: a netlink socket with one reader.
//
// The reader receives up to Config.Batch datagrams per system call and hands
// each packet to the handler. Verdicts given meanwhile, from the handler or
// from any other goroutine, collect in one buffer that goes to the kernel in
// one send when the batch is done; a verdict given while the reader waits
// for packets is sent at once.
type Queue struct {
	Num uint16

	// ReadErrors counts receive errors the reader survived (ENOBUFS: the
	// kernel dropped messages because the socket buffer was full; a
	// truncated datagram).
	ReadErrors atomic.Uint64
	// VerdictErrors counts the kernel's error answers to verdicts (a
	// packet id it does not hold, a malformed altered packet).
	VerdictErrors atomic.Uint64
	// Malformed counts messages from the kernel that could not be parsed.
	Malformed atomic.Uint64

	f       *os.File
	rc      syscall.RawConn
	started atomic.Bool
	early   [][]byte // datagrams that arrived with the bind's acknowledgement

	// Receiving, owned by the reader goroutine.
	slots  [][]byte
	iovs   []unix.Iovec
	hdrs   []mmsghdr
	lens   []int
	n      int
	rerr   syscall.Errno
	mmsg   bool
	readFn func(fd uintptr) bool
	msg    Message

	// Verdicts, under mu.
	mu       sync.Mutex
	inBatch  bool
	closed   bool
	out      []byte // encoded verdict messages
	plainRun int    // plain accepts at the end of out
	runStart int    // where they start
	runMax   uint32 // their highest id
	noBatch  bool
	open     int64 // packets handed to the handler and not yet answered
	writeFn  func(fd uintptr) bool
	writeErr syscall.Errno
	wbuf     []byte // what send sends
}

// mmsghdr is struct mmsghdr: a msghdr and the length received.
type mmsghdr struct {
	Hdr unix.Msghdr
	Len uint32
}

// Handler receives one queued packet: its id for the verdict, the bytes from
// the IP header on (valid only during the call) and its mark.
type Handler func(id uint32, pkt []byte, mark uint32)

// MessageHandler receives one queued packet with everything the kernel
// said about it; m and its slices are valid only during the call.
type MessageHandler func(m *Message)

// Config says how to bind a queue.
type Config struct {
	Num    uint16
	MaxLen uint32 // packets waiting for a verdict at most; 0: the kernel's default (1024)
	// Flags: FlagFailOpen, FlagConntrack, FlagGSO. A flag the kernel
	// refuses fails Open with an error that matches ErrFlagUnsupported
	// (and ErrConntrackUnsupported for FlagConntrack).
	Flags uint32
	// ReadBuffer is the socket's receive buffer in bytes (0: 4 MiB).
	ReadBuffer int
	// Batch is how many datagrams one receive takes at most (0: 16). Each
	// takes a buffer of BufferSize bytes.
	Batch int
	// NoRecvmmsg receives with one recvfrom per datagram instead of
	// recvmmsg (for measurements).
	NoRecvmmsg bool
	// NoBatchVerdict never answers with NFQNL_MSG_VERDICT_BATCH.
	NoBatchVerdict bool
}

// BufferSize is the receive buffer of one datagram: a whole packet (the
// copy range is 0xffff) and the kernel's attributes.
const BufferSize = 0xffff + 8192

// Verdict buffer: flushed before it would pass flushAt bytes (the default
// netlink send buffer takes 425984).
const (
	flushAt   = 160 << 10
	ackWait   = 5 * time.Second
	copyRange = 0xffff
)

var (
	// ErrQueueHeld: the kernel refused to bind the queue to this socket.
	ErrQueueHeld = errors.New("queue held by another process (another nfhelperd?), or CAP_NET_ADMIN missing")
	// ErrFlagUnsupported: the kernel refused a queue flag.
	ErrFlagUnsupported = errors.New("queue flag not supported by this kernel")
	// ErrConntrackUnsupported: the kernel cannot attach conntrack
	// information to queued packets (CONFIG_NETFILTER_NETLINK_GLUE_CT off).
	ErrConntrackUnsupported = fmt.Errorf("%w: conntrack (NFQA_CT needs CONFIG_NETFILTER_NETLINK_GLUE_CT)", ErrFlagUnsupported)
	// ErrClosed: the queue is closed.
	ErrClosed = errors.New("nfqueue: closed")
)

// OpenQueue binds queue number num. Fail-open: when the queue is full the
// kernel accepts packets instead of dropping them.
func OpenQueue(num uint16, maxLen uint32) (*Queue, error) {
	return Open(Config{Num: num, MaxLen: maxLen, Flags: FlagFailOpen})
}

// Open creates the socket and binds queue c.Num to it. Packets queue up in
// the socket until Start or Run reads them.
func Open(c Config) (*Queue, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("open nfqueue %d: socket: %w", c.Num, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open nfqueue %d: bind socket: %w", c.Num, err)
	}
	// ENOBUFS would only say that messages were lost; losing one costs that
	// packet's verdict, which the kernel then drops or fails open.
	if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open nfqueue %d: NETLINK_NO_ENOBUFS: %w", c.Num, err)
	}
	rbuf := c.ReadBuffer
	if rbuf <= 0 {
		rbuf = 4 << 20
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rbuf) != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rbuf); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("open nfqueue %d: read buffer: %w", c.Num, err)
		}
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 1<<20) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20)
	}
	q, err := newQueue(fd, c)
	if err != nil {
		return nil, fmt.Errorf("open nfqueue %d: %w", c.Num, err)
	}
	if err := q.bind(c); err != nil {
		q.f.Close()
		return nil, err
	}
	return q, nil
}

// newQueue sets up the reader and the verdict buffer of a socket fd
// (non-blocking) for queue c.Num; it owns fd from then on.
func newQueue(fd int, c Config) (*Queue, error) {
	f := os.NewFile(uintptr(fd), fmt.Sprintf("nfqueue %d", c.Num))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	batch := c.Batch
	if batch <= 0 {
		batch = 16
	}
	q := &Queue{
		Num: c.Num, f: f, rc: rc, mmsg: !c.NoRecvmmsg, noBatch: c.NoBatchVerdict,
		slots: make([][]byte, batch), iovs: make([]unix.Iovec, batch), hdrs: make([]mmsghdr, batch), lens: make([]int, batch),
		out: make([]byte, 0, flushAt+BufferSize),
	}
	for i := range q.slots {
		q.slots[i] = make([]byte, BufferSize)
		q.iovs[i].Base = &q.slots[i][0]
		q.iovs[i].SetLen(BufferSize)
		q.hdrs[i].Hdr.Iov = &q.iovs[i]
		q.hdrs[i].Hdr.SetIovlen(1)
	}
	q.readFn = q.recv
	q.writeFn = q.send
	return q, nil
}

// bind sends the configuration and waits for the kernel's answers.
func (q *Queue) bind(c Config) error {
	// Binding the protocol families is a no-op since Linux 3.8 and needed
	// before it.
	var b []byte
	b = appendConfigCmd(b, 0, 1, cfgCmdPFBind, unix.AF_INET)
	b = appendConfigCmd(b, 0, 2, cfgCmdPFBind, unix.AF_INET6)
	if err := q.request(b, 2); err != nil {
		return fmt.Errorf("open nfqueue %d: bind protocol families: %w", q.Num, err)
	}
	mask := FlagFailOpen | FlagConntrack | FlagGSO
	b = appendBind(b[:0], q.Num, 3, copyRange, c.MaxLen, c.Flags&mask, mask)
	err := q.request(b, 1)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EPERM):
		// The kernel's answer when another socket has the queue.
		return fmt.Errorf("bind nfqueue %d: %w: %w", q.Num, ErrQueueHeld, err)
	case errors.Is(err, unix.EOPNOTSUPP) && c.Flags&FlagConntrack != 0:
		return fmt.Errorf("bind nfqueue %d: %w: %w", q.Num, ErrConntrackUnsupported, err)
	case errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("bind nfqueue %d with flags %#x: %w: %w", q.Num, c.Flags, ErrFlagUnsupported, err)
	}
	return fmt.Errorf("bind nfqueue %d: %w", q.Num, err)
}

// request sends acknowledged messages and waits for acks answers: the first
// error the kernel reports, if any. Packets that arrive meanwhile are kept
// for the reader.
func (q *Queue) request(b []byte, acks int) error {
	if err := q.write(b); err != nil {
		return err
	}
	q.f.SetReadDeadline(time.Now().Add(ackWait))
	defer q.f.SetReadDeadline(time.Time{})
	buf := make([]byte, BufferSize)
	var first error
	for acks > 0 {
		var n int
		var rerr error
		err := q.rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		d := buf[:n]
		keep := false
		for len(d) > 0 {
			typ, _, msg, adv, err := nlHeader(d)
			if err != nil {
				break
			}
			d = d[adv:]
			switch typ {
			case nlmsgError:
				errno, _, err := parseError(msg)
				if err != nil {
					continue
				}
				acks--
				if errno != 0 && first == nil {
					first = syscall.Errno(errno)
				}
			case msgPacket:
				keep = true
			}
		}
		if keep {
			q.early = append(q.early, append([]byte(nil), buf[:n]...))
		}
	}
	return first
}

// Start reads packets in the background, calling h for each, until ctx
// ends or the socket fails: the channel then delivers nil or the error.
func (q *Queue) Start(ctx context.Context, h Handler) (<-chan error, error) {
	return q.Run(ctx, func(m *Message) { h(m.ID, m.Payload, m.Mark) })
}

// Run is Start with the whole message of each packet.
func (q *Queue) Run(ctx context.Context, h MessageHandler) (<-chan error, error) {
	if !q.started.CompareAndSwap(false, true) {
		return nil, fmt.Errorf("nfqueue %d: already started", q.Num)
	}
	done := make(chan error, 1)
	stop := context.AfterFunc(ctx, func() {
		// Wakes the reader; verdicts can still be sent until Close.
		q.f.SetReadDeadline(time.Unix(1, 0))
	})
	go func() {
		defer stop()
		err := q.read(ctx, h)
		q.mu.Lock()
		closed := q.closed
		q.mu.Unlock()
		if ctx.Err() != nil || closed || errors.Is(err, os.ErrClosed) {
			err = nil
		}
		done <- err
	}()
	return done, nil
}

// read is the reader loop.
func (q *Queue) read(ctx context.Context, h MessageHandler) error {
	for _, d := range q.early {
		q.batch(func() { q.process(d, h) })
	}
	q.early = nil
	for {
		if err := q.readOnce(h); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// readOnce waits for packets, hands what one receive got to h and sends
// the verdicts given meanwhile.
func (q *Queue) readOnce(h MessageHandler) error {
	q.n, q.rerr = 0, 0
	if err := q.rc.Read(q.readFn); err != nil {
		return fmt.Errorf("nfqueue %d: receive: %w", q.Num, err)
	}
	if q.n == 0 {
		switch q.rerr {
		case unix.ENOBUFS:
			q.ReadErrors.Add(1)
			return nil
		case unix.EINTR:
			return nil
		}
		return fmt.Errorf("nfqueue %d: receive: %w", q.Num, q.rerr)
	}
	q.mu.Lock()
	q.inBatch = true
	q.mu.Unlock()
	for i := range q.n {
		q.process(q.slots[i][:q.lens[i]], h)
	}
	q.mu.Lock()
	q.inBatch = false
	err := q.flushLocked()
	closed := q.closed
	q.mu.Unlock()
	if err != nil && !closed {
		q.VerdictErrors.Add(1)
	}
	return nil
}

// batch runs f as one read batch: verdicts go out when it returns.
func (q *Queue) batch(f func()) {
	q.mu.Lock()
	q.inBatch = true
	q.mu.Unlock()
	f()
	q.mu.Lock()
	q.inBatch = false
	q.flushLocked()
	q.mu.Unlock()
}

// recv is the receive system call, run by the runtime's poller: false to
// wait for the socket to become readable.
func (q *Queue) recv(fd uintptr) bool {
	if q.mmsg {
		r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&q.hdrs[0])), uintptr(len(q.hdrs)), unix.MSG_DONTWAIT, 0, 0)
		if e == unix.EAGAIN {
			return false
		}
		if e != 0 {
			q.rerr = e
			return true
		}
		q.n = int(r)
		for i := range q.n {
			q.lens[i] = int(q.hdrs[i].Len)
			if q.hdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0 {
				q.ReadErrors.Add(1)
			}
		}
		return true
	}
	for q.n < len(q.slots) {
		s := q.slots[q.n]
		r, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&s[0])), uintptr(len(s)), unix.MSG_DONTWAIT, 0, 0)
		if e != 0 {
			if e != unix.EAGAIN && q.n == 0 {
				q.rerr = e
			} else if e == unix.ENOBUFS {
				q.ReadErrors.Add(1)
			}
			break
		}
		q.lens[q.n] = int(r)
		q.n++
	}
	return q.n > 0 || q.rerr != 0
}

// process hands each packet of one datagram to h.
func (q *Queue) process(d []byte, h MessageHandler) {
	for len(d) > 0 {
		typ, _, msg, adv, err := nlHeader(d)
		if err != nil {
			q.Malformed.Add(1)
			return
		}
		d = d[adv:]
		switch typ {
		case msgPacket:
			if err := ParseQueueMessage(msg, &q.msg); err != nil {
				q.Malformed.Add(1)
				continue
			}
			q.mu.Lock()
			q.open++
			q.mu.Unlock()
			h(&q.msg)
		case nlmsgError:
			if errno, _, err := parseError(msg); err != nil {
				q.Malformed.Add(1)
			} else if errno != 0 {
				q.VerdictErrors.Add(1)
			}
		}
	}
}

// Accept lets the packet go on, with a new mark and new bytes when given.
func (q *Queue) Accept(id uint32, setMark bool, mark uint32, pkt []byte) error {
	v := Verdict{ID: id, Verdict: VerdictAccept, SetMark: setMark, Mark: mark, Payload: pkt}
	return q.SetVerdict(&v)
}

// Drop discards the packet.
func (q *Queue) Drop(id uint32) error {
	v := Verdict{ID: id, Verdict: VerdictDrop}
	return q.SetVerdict(&v)
}

// SetVerdict answers for one packet; v's slices are copied before it
// returns. Safe from any goroutine. From the handler, or while the reader
// handles a batch, the verdict goes out with the batch's; otherwise at once.
func (q *Queue) SetVerdict(v *Verdict) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrClosed
	}
	if len(q.out) > 0 && len(q.out)+v.size() > flushAt {
		if err := q.flushLocked(); err != nil {
			return q.verdictErr(v.ID, err)
		}
	}
	start := len(q.out)
	out, err := AppendVerdict(q.out, q.Num, 0, v)
	if err != nil {
		return q.verdictErr(v.ID, err)
	}
	q.out = out
	switch {
	case !v.plain():
		q.plainRun = 0
	case q.plainRun == 0:
		q.plainRun, q.runStart, q.runMax = 1, start, v.ID
	default:
		q.plainRun++
		if int32(v.ID-q.runMax) > 0 {
			q.runMax = v.ID
		}
	}
	if q.open > 0 {
		q.open--
	}
	if !q.inBatch {
		if err := q.flushLocked(); err != nil {
			return q.verdictErr(v.ID, err)
		}
	}
	return nil
}

// Flush sends the verdicts collected so far, before the batch ends: for a
// handler that must change kernel state only after they took effect.
func (q *Queue) Flush() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrClosed
	}
	return q.flushLocked()
}

func (q *Queue) verdictErr(id uint32, err error) error {
	return fmt.Errorf("nfqueue %d: verdict for packet %d: %w", q.Num, id, err)
}

// flushLocked sends the collected verdicts, in the order they were given.
// The plain accepts at the end become one batch verdict when no other
// packet of this queue waits for an answer: the kernel's batch verdict
// answers every packet up to an id.
func (q *Queue) flushLocked() error {
	if q.plainRun > 1 && q.open == 0 && !q.noBatch {
		q.out = AppendVerdictBatch(q.out[:q.runStart], q.Num, 0, q.runMax, VerdictAccept)
	}
	q.plainRun = 0
	if len(q.out) == 0 {
		return nil
	}
	err := q.write(q.out)
	q.out = q.out[:0]
	return err
}

// write sends b to the kernel in one datagram.
func (q *Queue) write(b []byte) error {
	q.writeErr, q.wbuf = 0, b
	err := q.rc.Write(q.writeFn)
	q.wbuf = nil
	if err != nil {
		return err
	}
	if q.writeErr != 0 {
		return q.writeErr
	}
	return nil
}

// send is the send system call of write.
func (q *Queue) send(fd uintptr) bool {
	b := q.wbuf
	_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0, 0)
	if e == unix.EAGAIN {
		return false
	}
	q.writeErr = e
	return true
}

// Close unbinds the queue and stops the reader; packets still queued are
// dropped by the kernel.
func (q *Queue) Close() error {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	return q.f.Close()
}
