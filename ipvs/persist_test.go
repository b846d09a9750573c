package ipvs

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

func TestPersistence(t *testing.T) {
	const timeout = int64(300 * time.Second)
	p := NewPersistence(300*time.Second, 32, 128)
	rs := servers(1, 1)
	c := netip.MustParseAddr("203.0.113.7")
	clock := int64(1000)

	if p.Lookup(c, clock) != nil {
		t.Fatal("template before any")
	}
	p.Remember(c, rs[1], clock)
	if got := p.Lookup(c, clock+timeout-1); got != rs[1] {
		t.Fatalf("lookup = %v", got)
	}
	// The lookup refreshed it: alive again for a whole timeout.
	clock += timeout - 1
	if got := p.Lookup(c, clock+timeout-1); got != rs[1] {
		t.Fatal("not refreshed by use")
	}
	clock += timeout - 1
	// /32: the neighbour is another client.
	if p.Lookup(netip.MustParseAddr("203.0.113.8"), clock) != nil {
		t.Error("neighbour shares the template under /32")
	}
	// IPv4-mapped is the same client.
	if p.Lookup(netip.MustParseAddr("::ffff:203.0.113.7"), clock) != rs[1] {
		t.Error("mapped address is another client")
	}
	clock += timeout - 1
	if p.Len() != 1 {
		t.Errorf("Len = %d", p.Len())
	}
	// Expired: gone on lookup.
	if p.Lookup(c, clock+timeout) != nil {
		t.Error("expired template used")
	}
	if p.Len() != 0 {
		t.Errorf("Len after expired lookup = %d", p.Len())
	}
	// Remember replaces.
	p.Remember(c, rs[0], clock)
	p.Remember(c, rs[1], clock)
	if p.Lookup(c, clock) != rs[1] || p.Len() != 1 {
		t.Error("Remember did not replace")
	}
}

func TestPersistenceNetmask(t *testing.T) {
	p := NewPersistence(time.Minute, 24, 64)
	rs := servers(1)
	p.Remember(netip.MustParseAddr("198.51.100.1"), rs[0], 0)
	p.Remember(netip.MustParseAddr("2001:db8:1:2::1"), rs[0], 0)
	for _, c := range []string{"198.51.100.1", "198.51.100.254", "2001:db8:1:2::ffff", "2001:db8:1:2:8000::1"} {
		if p.Lookup(netip.MustParseAddr(c), 1) != rs[0] {
			t.Errorf("%s not in its network's template", c)
		}
	}
	for _, c := range []string{"198.51.101.1", "2001:db8:1:3::1", "::ffff:198.51.99.1"} {
		if p.Lookup(netip.MustParseAddr(c), 1) != nil {
			t.Errorf("%s shares a template", c)
		}
	}
	if p.Len() != 2 {
		t.Errorf("Len = %d", p.Len())
	}
}

// TestPersistenceQuiesced follows the kernel's default
// (expire_quiescent_template = 0): a persistent client keeps its quiesced
// server; with ExpireQuiescent it is scheduled anew.
func TestPersistenceQuiesced(t *testing.T) {
	rs := servers(1)
	c := netip.MustParseAddr("192.0.2.9")
	p := NewPersistence(time.Minute, 32, 128)
	p.Remember(c, rs[0], 0)
	rs[0].Weight = 0
	if p.Lookup(c, 1) != rs[0] {
		t.Error("template to a quiesced server dropped by default")
	}
	p.ExpireQuiescent = true
	if p.Lookup(c, 2) != nil || p.Len() != 0 {
		t.Error("ExpireQuiescent kept a template to a quiesced server")
	}
}

func TestPersistenceExpireForget(t *testing.T) {
	p := NewPersistence(10*time.Second, 32, 128)
	rs := servers(1, 1)
	for i := range 1000 {
		a := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		p.Remember(a, rs[i%2], int64(i)*int64(time.Millisecond))
	}
	// Entries remembered at 0..999 ms expire at 10 s + that.
	at := int64(10*time.Second) + int64(500*time.Millisecond)
	if n := p.Expire(at); n != 501 {
		t.Errorf("Expire removed %d, want 501", n)
	}
	if p.Len() != 499 {
		t.Errorf("Len = %d, want 499", p.Len())
	}
	if n := p.Forget(rs[0]); n != 249 {
		t.Errorf("Forget removed %d, want 249", n)
	}
	if p.Len() != 250 {
		t.Errorf("Len = %d, want 250", p.Len())
	}
	if n := p.Expire(int64(time.Hour)); n != 250 || p.Len() != 0 {
		t.Errorf("final Expire %d, Len %d", n, p.Len())
	}
}

func TestPersistenceConcurrent(t *testing.T) {
	p := NewPersistence(time.Second, 32, 128)
	rs := servers(1, 1, 1)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 5000 {
				a := netip.AddrFrom4([4]byte{10, byte(g), byte(i >> 8), byte(i)})
				now := int64(i) * int64(time.Millisecond)
				if got := p.Lookup(a, now); got == nil {
					p.Remember(a, rs[i%3], now)
				}
				if i%500 == 0 {
					p.Expire(now)
					p.Len()
				}
			}
		})
	}
	wg.Wait()
	if p.Len() == 0 {
		t.Error("no templates left")
	}
}

func BenchmarkPersistenceLookup(b *testing.B) {
	p := NewPersistence(time.Hour, 32, 128)
	rs := servers(1)
	clients := clientAddrs(1024, 11)
	for _, c := range clients {
		p.Remember(c.Addr(), rs[0], 0)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if p.Lookup(clients[i&1023].Addr(), 1) == nil {
			b.Fatal("miss")
		}
		i++
	}
}
