package ipvs

import (
	"net/netip"
	"sync"
	"time"
)

// Persistence is IPVS's persistent service (ipvsadm -p): a client, or its
// network by the persistence netmask, keeps going to the real server it
// was scheduled to first, for as long as it comes back within the timeout.
// The entries are the kernel's connection templates: each use refreshes
// the timeout.
//
// It is safe for concurrent use. Times are monotonic nanoseconds on any
// clock the caller keeps consistent (the engine's now()).
type Persistence struct {
	timeout        int64
	v4Bits, v6Bits int

	// ExpireQuiescent is the expire_quiescent_template sysctl: when set, a
	// template to a quiesced server (weight 0) is dropped on lookup and the
	// client is scheduled anew. Off by default, as the kernel's: persistent
	// clients keep their quiesced server. Set it before use.
	ExpireQuiescent bool

	shards [persistShards]persistShard
}

const persistShards = 64

type persistShard struct {
	mu sync.Mutex
	m  map[[16]byte]persistEntry
	_  [48]byte // keep shards' locks off each other's cache lines
}

type persistEntry struct {
	rs      *RealServer
	expires int64
}

// NewPersistence returns an empty template table. v4Bits and v6Bits are the
// persistence netmask's prefix lengths (IPVS's defaults are 32 and 128:
// per client address); out-of-range values are clamped.
func NewPersistence(timeout time.Duration, v4Bits, v6Bits int) *Persistence {
	p := &Persistence{
		timeout: int64(timeout),
		v4Bits:  min(max(v4Bits, 0), 32),
		v6Bits:  min(max(v6Bits, 0), 128),
	}
	for i := range p.shards {
		p.shards[i].m = make(map[[16]byte]persistEntry)
	}
	return p
}

// key is the client's network under the persistence netmask, as 16 bytes
// (IPv4 in its mapped form, so the map has no pointers to scan).
func (p *Persistence) key(client netip.Addr) ([16]byte, *persistShard) {
	client = client.Unmap().WithZone("")
	bits := p.v6Bits
	if client.Is4() {
		bits = p.v4Bits
	}
	if pfx, err := client.Prefix(bits); err == nil {
		client = pfx.Addr()
	}
	k := client.As16()
	h := uint32(2166136261)
	for _, b := range k {
		h = (h ^ uint32(b)) * 16777619
	}
	return k, &p.shards[h%persistShards]
}

// Lookup returns the server the client's template names and refreshes the
// template, or nil when there is none, it expired or its server is Down
// (the template is dropped: the client is scheduled anew). The caller
// holds the scheduling lock that guards Down.
func (p *Persistence) Lookup(client netip.Addr, now int64) *RealServer {
	k, s := p.key(client)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[k]
	if !ok {
		return nil
	}
	if e.expires <= now || e.rs.Down || (p.ExpireQuiescent && !available(e.rs)) {
		delete(s.m, k)
		return nil
	}
	e.expires = now + p.timeout
	s.m[k] = e
	return e.rs
}

// Remember makes rs the client's server for the timeout from now.
func (p *Persistence) Remember(client netip.Addr, rs *RealServer, now int64) {
	k, s := p.key(client)
	s.mu.Lock()
	s.m[k] = persistEntry{rs, now + p.timeout}
	s.mu.Unlock()
}

// Forget drops every template to rs, as the kernel does for a destination
// removed from the service (it is no longer IP_VS_DEST_F_AVAILABLE); it
// returns how many were dropped.
func (p *Persistence) Forget(rs *RealServer) int {
	n := 0
	for i := range p.shards {
		s := &p.shards[i]
		s.mu.Lock()
		for k, e := range s.m {
			if e.rs == rs {
				delete(s.m, k)
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}

// Len is the number of templates, expired ones not yet swept included.
func (p *Persistence) Len() int {
	n := 0
	for i := range p.shards {
		s := &p.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// Expire removes the templates whose timeout passed, one shard at a time
// so that lookups in the other shards go on; it returns how many.
func (p *Persistence) Expire(now int64) int {
	n := 0
	for i := range p.shards {
		s := &p.shards[i]
		s.mu.Lock()
		for k, e := range s.m {
			if e.expires <= now {
				delete(s.m, k)
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}
