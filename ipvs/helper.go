package ipvs

import (
	"fmt"
	"net/netip"
	"sort"
	"sync"

	"github.com/nfhelper/nfhelper/nfq"
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
	Client netip.AddrPort // the client as the real server sees it
	VIP    netip.AddrPort // the virtual service the client connected to
	Server netip.AddrPort // the real server chosen for the connection
}

// ChannelKind says which translation a data channel needs.
type ChannelKind uint8

const (
	// ChannelPassive: the client connects to VIP.Addr():VIP.Port(); the kernel
	// must send that connection to Server (DNAT).
	ChannelPassive ChannelKind = iota + 1
	// ChannelActive: the real server Server.Addr() connects to Client; the kernel
	// must make it leave with source address VIP.Addr() (SNAT).
	ChannelActive
)

// Channel is a data connection a helper asks the datapath to allow.
type Channel struct {
	Kind   ChannelKind
	Client netip.AddrPort // passive: port 0 (any client port); active: the announced address and port
	Server netip.AddrPort // passive: the announced address and port; active: port 0 (any)
	VIP    netip.AddrPort // passive: the port announced to the client; active: port 0 (keep)
}

// Result collects what a helper found in one payload. Workers reuse one
// Result per goroutine (Reset) so that steady state does not allocate.
type Result struct {
	Edits    []nfq.Edit // offsets into the TCP payload
	Channels []Channel
	text     []byte
}

// Reset empties r, keeping its storage.
func (r *Result) Reset() {
	r.Edits = r.Edits[:0]
	r.Channels = r.Channels[:0]
	r.text = r.text[:0]
}

// Replace records an edit; text is copied, so the caller may reuse it.
func (r *Result) Replace(off, length int, text []byte) {
	start := len(r.text)
	r.text = append(r.text, text...)
	r.Edits = append(r.Edits, nfq.Edit{Off: off, Len: length, New: r.text[start:len(r.text):len(r.text)]})
}

// Open records a data-channel request.
func (r *Result) Open(c Channel) { r.Channels = append(r.Channels, c) }

// Delta is the payload length change the edits in r cause.
func (r *Result) Delta() int {
	d := 0
	for _, e := range r.Edits {
		d += len(e.New) - e.Len
	}
	return d
}

// Helper is an application-layer helper (FTP, ...). It reads payloads and
// reports edits and data channels; the core owns seq/ack bookkeeping, as in
// ip_vs_app.
type Helper interface {
	Name() string
	// Inspect reads one TCP payload sent in direction dir of session s and
	// appends edits (non-overlapping, in ascending offset order) and
	// data-channel requests to r. It must not retain payload.
	Inspect(s *Session, dir Direction, payload []byte, r *Result)
}

var (
	registryMu sync.RWMutex
	registry   = map[string]Helper{}
)

// Register makes a helper available by name to service configurations.
func Register(h Helper) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[h.Name()]; dup {
		panic(fmt.Sprintf("ipvs: helper %q registered twice", h.Name()))
	}
	registry[h.Name()] = h
}

// LookupHelper returns the helper registered under name.
func LookupHelper(name string) (Helper, bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	h, ok := registry[name]
	return h, ok
}

// HelperNames lists registered helpers, sorted.
func HelperNames() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
