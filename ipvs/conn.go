package ipvs

import (
	"net/netip"
	"sync"
	"time"

	"github.com/nfhelper/nfhelper/nfq/packet"
	"github.com/nfhelper/nfhelper/nfq/seqnum"
)

// helped is what a connection read by a helper has besides: kept apart so
// that a plain balanced connection stays small.
type helped struct {
	helper  ConnHelper
	streams [2]stream // indexed by the Direction that sends the stream
	open    []openChannel
	// clientNAT is the client's address as the server sees it, where the
	// user's rules SNAT it (add-on mode); invalid otherwise.
	clientNAT netip.AddrPort
	// offsetsStored: the kernel holds this connection's stream offsets.
	offsetsStored bool
	// acksQueued: the datapath was asked to queue this connection's pure
	// ACKs (ChannelAcks); until then the kernel passes them by.
	acksQueued bool
	// liberal: the kernel datapath had the kernel's records set outright,
	// which marks the connection's TCP tracking liberal (kernel.SetSeqAdj).
	liberal bool
	// ended: the connection left the table; it asks the kernel for no
	// more elements, which nothing would delete.
	ended bool
	// announcing: a segment of stream annDir, sequence numbers
	// [annSeq, annEnd) as sent, announced data channels and waits in the
	// datapath for their elements (compat datapath). A copy of it resent
	// meanwhile is dropped: released with its recorded edits, it would
	// tell the client of a channel the kernel does not have yet.
	announcing     bool
	annDir         Direction
	annSeq, annEnd seqnum.Value
	// asked is when conntrack was last asked whether it still holds the
	// connection (checkIdle), alive when it last said so; 0: never.
	asked, alive int64
}

// AcksNotOpened takes back the request of a Verdict.Acks that did not reach
// the kernel (the datapath's backlog was full, or nftables refused it): the
// connection asks again with its next packet.
func (e *Engine) AcksNotOpened(ch Channel) {
	c, _ := e.Table.Lookup(ch.Client, ch.Server)
	if c == nil {
		return
	}
	c.mu.Lock()
	if c.help != nil {
		c.help.acksQueued = false
	}
	c.mu.Unlock()
}

// Announced tells the connection of a Verdict.Announcing that the
// verdict carrying its channels has been given (or the channels will not
// come): copies of that segment pass again.
func (e *Engine) Announced(c *Conn) {
	c.mu.Lock()
	if c.help != nil {
		c.help.announcing = false
	}
	c.mu.Unlock()
}

// Announced is Engine.Announced, for a queue's handler.
func (w *Worker) Announced(c *Conn) { w.e.Announced(c) }

// AcksNotOpened is Engine.AcksNotOpened, for a queue's handler.
func (w *Worker) AcksNotOpened(ch Channel) { w.e.AcksNotOpened(ch) }

// acksEdits is how many unacknowledged edits that keep the stream's length
// a connection may have before its pure ACKs are queued: well below the
// throttle (maxEdits/2), which only the receiver's ACKs lift.
const acksEdits = 16

// needsAcks reports whether the receivers' acknowledgements now matter to
// a stream: an edit that changed a length shifts them, withheld bytes are
// released by them, bytes kept for resending are dropped by them, and many
// unacknowledged edits must be forgotten by them before the throttle stops
// the sender. Until then an ACK without payload passes unchanged and
// changes nothing the connection's next segment with payload, FIN or RST
// would not (a rewrite of the same length, recorded as one edit, maps no
// position; its edit is forgotten with that segment's ACK).
func (h *helped) needsAcks() bool {
	for i := range h.streams {
		st := &h.streams[i]
		if st.base != 0 || st.hold > 0 || len(st.rel) > 0 || len(st.edits) >= acksEdits {
			return true
		}
		for j := range st.edits {
			if st.edits[j].cum != 0 {
				return true
			}
		}
	}
	return false
}

// TCPState is the coarse state IPVS keeps per connection to pick a timeout.
type TCPState uint8

const (
	StateSynSent TCPState = iota
	StateEstablished
	StateFinWait
	StateClose
	StateUDP // a UDP flow, known from its first packet only
)

var stateNames = [...]string{"SYN_SENT", "ESTABLISHED", "FIN_WAIT", "CLOSE", "UDP"}

func (s TCPState) String() string { return stateNames[s] }

// Timeouts per state, as IPVS's defaults (a helped established
// connection's: helpedEstablished).
var stateTimeout = [...]time.Duration{
	StateSynSent:     2 * time.Minute,
	StateEstablished: 15 * time.Minute,
	StateFinWait:     2 * time.Minute,
	StateClose:       10 * time.Second,
	StateUDP:         5 * time.Minute,
}

// Conn is a balanced control connection.
type Conn struct {
	Session
	Service *Service
	Real    *RealServer

	mu    sync.Mutex
	state TCPState
	seen  int64       // last packet, monotonic nanoseconds (see now()); the state's timeout runs from it
	help  *helped     // nil for a connection balanced without a helper
	reply *replyState // a datagram helper's request flow; nil before its first request
}

// helpedEstablished is how long a helped established connection stays in
// the table after the last packet the daemon saw, or the last time
// conntrack said it still holds the connection: conntrack's own
// established timeout (nf_conntrack_tcp_timeout_established). Its pure
// ACKs, keepalives too, mostly pass the daemon by, so a control connection
// idle during a long transfer shows the daemon nothing for as long as the
// transfer lasts, and must not be forgotten meanwhile: its next 227 would
// pass unrewritten, its offsets would be lost. It leaves the table when
// conntrack destroys its entry (ConntrackDestroyed); where that event was
// lost (the event socket overflowed), checkIdle finds the entry gone.
const helpedEstablished = 5 * 24 * time.Hour

// idleCheck is how long a helped established connection may show the
// daemon nothing before conntrack is asked whether it still holds it, and
// how often it is asked again.
const idleCheck = 15 * time.Minute

// deadline is when the connection times out; c.mu is held.
func (c *Conn) deadline() int64 {
	if c.state == StateEstablished && c.help != nil {
		return max(c.seen, c.help.alive) + int64(helpedEstablished)
	}
	if c.reply != nil && len(c.reply.flows) > 0 {
		// Its replies end by conntrack's destroy events, as a helped
		// connection does.
		return max(c.seen, c.reply.flows[len(c.reply.flows)-1].started) + int64(helpedEstablished)
	}
	return c.seen + int64(stateTimeout[c.state])
}

// idle reports whether conntrack is to be asked about the connection at
// time at; c.mu is held.
func (c *Conn) idle(at int64) bool {
	return c.state == StateEstablished && c.help != nil && max(c.seen, c.help.asked)+int64(idleCheck) < at
}

// State returns the connection's TCP state.
func (c *Conn) State() TCPState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// newConn is a new connection of svc to rs.
func newConn(s Session, svc *Service, rs *RealServer) *Conn {
	c := &Conn{Session: s, Service: svc, Real: rs}
	if h := svc.bind(&c.Session); h != nil || svc.AddOn {
		c.help = &helped{helper: h}
	}
	c.seen = now()
	return c
}

// startClient starts the client's stream at the SYN's sequence number.
func (c *Conn) startClient(isn seqnum.Value) {
	if c.help == nil {
		return
	}
	c.mu.Lock()
	c.help.streams[FromClient].start(isn)
	c.mu.Unlock()
}

// track advances the state by a packet's TCP flags; c.mu is held.
func (c *Conn) track(flags uint8, now int64) {
	next := c.state
	switch {
	case flags&packet.FlagRST != 0:
		next = StateClose
	case flags&packet.FlagFIN != 0:
		next = max(c.state, StateFinWait)
	case flags&packet.FlagSYN != 0:
		// SYN and SYN-ACK keep the state.
	case c.state == StateSynSent:
		next = StateEstablished
	}
	c.setState(next, now)
}

// setState moves the connection to state next, keeping its server's counts;
// c.mu is held.
func (c *Conn) setState(next TCPState, now int64) {
	if (next == StateEstablished) != (c.state == StateEstablished) {
		if next == StateEstablished {
			c.Real.Active.Add(1)
			c.Real.Inactive.Add(-1)
		} else {
			c.Real.Active.Add(-1)
			c.Real.Inactive.Add(1)
		}
	}
	c.state = next
	c.seen = now
}

// gone takes a connection leaving the table out of its server's counts.
func (c *Conn) gone() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == StateEstablished {
		c.Real.Active.Add(-1)
	} else {
		c.Real.Inactive.Add(-1)
	}
}

var epoch = time.Now()

// now is monotonic nanoseconds since start; cheaper to compare than time.Time.
func now() int64 { return int64(time.Since(epoch)) }
