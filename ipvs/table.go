package ipvs

import (
	"net/netip"
	"sync"
)

const shardCount = 64

// connKey names a connection by its client and one of its other ends: the VIP
// (as the client addressed it) or the real server (as it reaches the server).
type connKey struct {
	client, peer netip.AddrPort
}

type shard struct {
	mu    sync.RWMutex
	conns map[connKey]*Conn
}

// Table is the connection table, shared by all queue workers because the two
// directions of one connection can arrive on different queues.
type Table struct {
	shards   [shardCount]shard
	onRemove func(*Conn) // called for each expired connection, outside shard locks
}

// NewTable returns an empty table.
func NewTable() *Table {
	t := &Table{}
	for i := range t.shards {
		t.shards[i].conns = make(map[connKey]*Conn)
	}
	return t
}

// shardOf spreads keys by the client, so both keys of a connection share a
// shard and insert/remove take one lock.
func (t *Table) shardOf(client netip.AddrPort) *shard {
	a := client.Addr().As16()
	h := uint32(client.Port())
	for i := 0; i < 16; i += 4 {
		h = h*31 + uint32(a[i])<<24 | uint32(a[i+1])<<16 | uint32(a[i+2])<<8 | uint32(a[i+3])
	}
	h ^= h >> 16
	return &t.shards[h%shardCount]
}

func (t *Table) get(client, peer netip.AddrPort) *Conn {
	s := t.shardOf(client)
	s.mu.RLock()
	c := s.conns[connKey{client, peer}]
	s.mu.RUnlock()
	return c
}

// Lookup finds the connection a packet from src to dst belongs to, after
// DNAT (real server addresses), and the packet's direction.
func (t *Table) Lookup(src, dst netip.AddrPort) (*Conn, Direction) {
	if c := t.get(src, dst); c != nil {
		return c, FromClient
	}
	if c := t.get(dst, src); c != nil {
		return c, FromServer
	}
	return nil, FromClient
}

// LookupVIP finds the connection a client opened to a VIP.
func (t *Table) LookupVIP(client, vip netip.AddrPort) *Conn { return t.get(client, vip) }

// Insert adds c under its keys, replacing a previous connection of the
// same client port (a reused port after close).
func (t *Table) Insert(c *Conn) {
	s := t.shardOf(c.Client)
	s.mu.Lock()
	old := s.conns[connKey{c.Client, c.VIP}]
	if old != nil {
		delete(s.conns, connKey{old.Client, old.Server})
	}
	s.conns[connKey{c.Client, c.VIP}] = c
	if c.help != nil {
		// Only a helped connection's later packets, after DNAT, are looked
		// up; the others are known by the SYN and conntrack's events.
		s.conns[connKey{c.Client, c.Server}] = c
	}
	s.mu.Unlock()
	if old != nil {
		t.removed(old)
	}
}

// Alias adds c under the client address the server sees when the user's
// rules SNAT it, so that the server's packets find it.
func (t *Table) Alias(c *Conn, nat netip.AddrPort) {
	s := t.shardOf(nat)
	s.mu.Lock()
	s.conns[connKey{nat, c.Server}] = c
	s.mu.Unlock()
}

// Remove takes c out of the table now; false if it was no longer there.
func (t *Table) Remove(c *Conn) bool {
	s := t.shardOf(c.Client)
	s.mu.Lock()
	there := s.conns[connKey{c.Client, c.VIP}] == c
	if there {
		delete(s.conns, connKey{c.Client, c.VIP})
		if s.conns[connKey{c.Client, c.Server}] == c {
			delete(s.conns, connKey{c.Client, c.Server})
		}
	}
	s.mu.Unlock()
	if !there {
		return false
	}
	var nat netip.AddrPort
	c.mu.Lock()
	if c.help != nil {
		nat = c.help.clientNAT
	}
	c.mu.Unlock()
	if nat.IsValid() {
		s := t.shardOf(nat)
		s.mu.Lock()
		if s.conns[connKey{nat, c.Server}] == c {
			delete(s.conns, connKey{nat, c.Server})
		}
		s.mu.Unlock()
	}
	t.removed(c)
	return true
}

// each calls f for every connection, a shard at a time, under its lock.
func (t *Table) each(f func(*Conn)) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.RLock()
		for k, c := range s.conns {
			if k.peer == c.VIP {
				f(c)
			}
		}
		s.mu.RUnlock()
	}
}

// Len is the number of connections.
func (t *Table) Len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.RLock()
		for k, c := range s.conns {
			if k.peer == c.VIP {
				n++
			}
		}
		s.mu.RUnlock()
	}
	return n
}

// Expire removes connections whose timeout passed, one shard at a time so
// that no sweep stops all workers.
func (t *Table) Expire(at int64) int {
	n := 0
	var gone []*Conn
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for k, c := range s.conns {
			c.mu.Lock()
			dead := c.deadline() < at
			c.mu.Unlock()
			if dead {
				delete(s.conns, k)
				if k.peer == c.VIP {
					gone = append(gone, c)
				}
			}
		}
		s.mu.Unlock()
		n += len(gone)
		for _, c := range gone {
			t.removed(c)
		}
		gone = gone[:0]
	}
	return n
}

// idle appends to out the connections conntrack is to be asked about at
// time at (Conn.idle).
func (t *Table) idle(at int64, out []*Conn) []*Conn {
	t.each(func(c *Conn) {
		c.mu.Lock()
		if c.idle(at) {
			out = append(out, c)
		}
		c.mu.Unlock()
	})
	return out
}

func (t *Table) removed(c *Conn) {
	c.gone()
	if t.onRemove != nil {
		t.onRemove(c)
	}
}
