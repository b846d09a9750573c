package ipvs

import (
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/nfhelper/nfhelper/nfq/packet"
)

// Direction tells which peer sent a packet of a balanced connection.
type Direction uint8

const (
	// FromClient is client to real server (the original direction).
	FromClient Direction = iota
	// FromServer is real server to client (the reply direction).
	FromServer
)

func (d Direction) String() string {
	if d == FromClient {
		return "client->server"
	}
	return "server->client"
}

// Session is what a helper may know about the connection a payload belongs to.
type Session struct {
	Client netip.AddrPort // the client
	VIP    netip.AddrPort // the virtual service (or add-on match) the client connected to
	Server netip.AddrPort // the real server
}

// Policy is a service's rules for the data channels its helper announces.
type Policy struct {
	// Loose lets announcements name hosts other than the connection's own
	// peers (FTP bounce, RFC 2577). Off by default.
	Loose bool
	// AllowLowPorts lets data channels use ports below 1024.
	AllowLowPorts bool
	// BlockRefused keeps a refused announcement from the server as one: a
	// refused PORT or EPRT goes on as XPRT, which servers answer with 500.
	// Off by default: the command passes untouched, without a channel.
	BlockRefused bool
	// MaxChannels is how many announced, unused channels a connection may
	// have; a new one replaces the oldest (the kernel's max_expected).
	MaxChannels int
	// ChannelTimeout is how long an announced channel stays open.
	ChannelTimeout time.Duration
	// MaxPending bounds a client host's requests (a datagram helper's)
	// whose answer has not come yet: a request beyond it is dropped, and
	// the client sends it again later.
	MaxPending int
	// ECMP: routers behind ECMP share the load, each helping what crosses
	// it. A passive channel's claim held by another connection but leading
	// to the same server and port is taken over: the server's own port is
	// then announced, which a router that saw no channel follows (nft
	// ecmp.go). The claim of a session whose data connection crossed
	// another router never hears of it, and would otherwise move the port
	// of the client's next session to that server and port. Should late
	// word of the earlier data connection end the new channel, its data
	// connection still reaches that server and port by the hash.
	ECMP bool
}

// DefaultPolicy is the kernel FTP helper's: one pending channel, 5
// minutes; and 128 pending requests per client host.
var DefaultPolicy = Policy{MaxChannels: 1, ChannelTimeout: 5 * time.Minute, MaxPending: 128}

// Helper is an application-layer helper (FTP, ...), registered by name. It
// reads byte streams and reports edits and data channels; the core owns
// segment boundaries and seq/ack bookkeeping, as in ip_vs_app.
type Helper interface {
	Name() string
	// Bind returns the state for one new connection of a service with policy p.
	Bind(s *Session, p *Policy) ConnHelper
}

// MaxCarry bounds the bytes a helper may carry from one segment to the next.
const MaxCarry = 512

// ConnHelper reads one connection's two byte streams.
type ConnHelper interface {
	// Inspect reads the next bytes of direction dir's stream, strictly in
	// order and each byte once: data is what the previous call in this
	// direction carried (r.Carry) followed by the new segment's payload.
	// Its first fixed bytes were already delivered to the peer and cannot be
	// edited. fin is set when the sender has finished: nothing may be
	// carried. Inspect appends edits (offsets into data, ascending, none
	// before fixed) and channel requests to r, and may set r.Carry and
	// r.Hold.
	Inspect(dir Direction, data []byte, fixed int, fin bool, r *Result)
}

// StateSaver is a ConnHelper whose state fits in a word, which the kernel
// datapath keeps in the kernel with the connection (its helper data): a
// restarted daemon goes on where the old one stopped, e.g. rewriting the
// reply to a command the old one saw.
type StateSaver interface {
	SaveState() uint64
	// LoadState takes a word SaveState returned, possibly by another
	// process of the same version.
	LoadState(uint64)
}

// Refusal is why a helper declined an announced data channel.
type Refusal uint8

const (
	RefuseBounce       Refusal = iota // the address is not the announcing peer's
	RefuseLowPort                     // a port below 1024
	RefuseUnsolicited                 // a passive reply the client did not ask for
	RefuseEPSVAll                     // PORT, PASV or EPRT after EPSV ALL
	RefuseNoPort                      // no free port on the VIP
	RefuseMalformed                   // PORT or EPRT arguments that do not parse
	RefusePending                     // a request beyond its client's pending bound (dropped)
	RefuseForeignReply                // an answer to a pending request from a host other than its server
	numRefusals
)

var refusalNames = [...]string{"bounce", "low_port", "unsolicited", "epsv_all", "no_port", "malformed", "pending", "foreign_reply"}

func (r Refusal) String() string { return refusalNames[r] }

// ChannelOpener reserves data channels for the connection being inspected.
type ChannelOpener interface {
	// OpenPassive lets the client connect to the returned VIP address and
	// port, which reach server. The port is server's own unless another
	// pending channel of the same client holds it. !ok: every port is held
	// (RefuseNoPort); the announcement must not reach the client as one.
	OpenPassive(server netip.AddrPort) (vip netip.AddrPort, ok bool)
	// OpenActive lets the real server connect to client, from the VIP. The
	// announcement to the server must name the returned address and port,
	// which differ from client when the server sees the client through
	// source NAT (add-on mode behind the user's SNAT). !ok: no port on the
	// translated address is free (RefuseNoPort); the announcement must not
	// reach the server as one.
	OpenActive(client netip.AddrPort) (announce netip.AddrPort, ok bool)
}

// Result collects what a helper found in one Inspect call. Workers reuse one
// Result per goroutine (Reset) so that steady state does not allocate.
type Result struct {
	Edits    []packet.Edit // offsets into Inspect's data
	Refusals []Refusal
	// Carry is how many trailing bytes of data to present again, before the
	// next segment's payload; Hold (<= Carry) how many of those to withhold
	// from the peer until then, because they may still need an edit.
	Carry, Hold int
	// Stop ends inspection of the connection (it turned to TLS, say); seq
	// and ack correction go on.
	Stop bool

	Opener ChannelOpener
	text   []byte
}

// Reset empties r, keeping its storage and Opener.
func (r *Result) Reset() {
	r.Edits = r.Edits[:0]
	r.Refusals = r.Refusals[:0]
	r.Carry, r.Hold, r.Stop = 0, 0, false
	r.text = r.text[:0]
}

// Replace records an edit; text is copied, so the caller may reuse it.
func (r *Result) Replace(off, length int, text []byte) {
	start := len(r.text)
	r.text = append(r.text, text...)
	r.Edits = append(r.Edits, packet.Edit{Off: off, Len: length, New: r.text[start:len(r.text):len(r.text)]})
}

// OpenPassive asks the core for a passive channel, see ChannelOpener.
func (r *Result) OpenPassive(server netip.AddrPort) (netip.AddrPort, bool) {
	return r.Opener.OpenPassive(server)
}

// OpenActive asks the core for an active channel, see ChannelOpener.
func (r *Result) OpenActive(client netip.AddrPort) (netip.AddrPort, bool) {
	return r.Opener.OpenActive(client)
}

// Refuse records a declined announcement; the core counts and logs it.
func (r *Result) Refuse(why Refusal) { r.Refusals = append(r.Refusals, why) }

// Delta is the length change the edits cause.
func (r *Result) Delta() int {
	d := 0
	for _, e := range r.Edits {
		d += len(e.New) - e.Len
	}
	return d
}

// DatagramHelper is a UDP service's helper. The datapath queues a UDP
// flow's packets until it has a reply: a client's request, and its copies
// while no answer came back on the same ports. The helper reads each, and
// may let the real server answer from a port of its own to the client's
// port (a reply flow, as TFTP's transfer), which the kernel then
// translates as coming from the VIP. It never edits.
type DatagramHelper interface {
	Name() string
	// Request reads a client's datagram to the service. reply: the server
	// may start a reply flow to the client. about: the request, in one line
	// for the connection's view; "" if it is none.
	Request(datagram []byte) (reply bool, about string)
}

var (
	registryMu sync.RWMutex
	registry   = map[string]Helper{}
	datagrams  = map[string]DatagramHelper{}
)

// Register makes a helper available by name to service configurations.
func Register(h Helper) {
	registryMu.Lock()
	defer registryMu.Unlock()
	mustBeNew(h.Name())
	registry[h.Name()] = h
}

// RegisterDatagram makes a UDP service's helper available by name.
func RegisterDatagram(h DatagramHelper) {
	registryMu.Lock()
	defer registryMu.Unlock()
	mustBeNew(h.Name())
	datagrams[h.Name()] = h
}

// mustBeNew panics if a helper of either kind has name; registryMu is held.
func mustBeNew(name string) {
	_, stream := registry[name]
	_, datagram := datagrams[name]
	if stream || datagram {
		panic(fmt.Sprintf("ipvs: helper %q registered twice", name))
	}
}

// LookupDatagramHelper returns the UDP service's helper registered under
// name.
func LookupDatagramHelper(name string) (DatagramHelper, bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	h, ok := datagrams[name]
	return h, ok
}

// LookupHelper returns the helper registered under name.
func LookupHelper(name string) (Helper, bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	h, ok := registry[name]
	return h, ok
}

// HelperNames lists registered helpers of both kinds, sorted.
func HelperNames() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(registry)+len(datagrams))
	for n := range registry {
		names = append(names, n)
	}
	for n := range datagrams {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
