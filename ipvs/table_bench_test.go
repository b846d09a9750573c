package ipvs

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"unsafe"
)

var tableSizes = []struct {
	name string
	n    int
}{{"1k", 1_000}, {"100k", 100_000}, {"1M", 1_000_000}}

// benchSession is connection i: clients spread over 10.0.0.0/8 with a port
// each, all to one VIP, real servers spread over 8 addresses.
func benchSession(i int) Session {
	c := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), uint16(1024+i%50000))
	return Session{
		Client: c,
		VIP:    netip.MustParseAddrPort("198.51.100.10:21"),
		Server: netip.AddrPortFrom(netip.AddrFrom4([4]byte{172, 16, 0, byte(1 + i%8)}), 21),
	}
}

var benchService = &Service{Name: "bench"}

// nopHelper stands for a helper: a helped connection is also found by
// its real server, and carries stream state.
type nopHelper struct{}

func (nopHelper) Inspect(Direction, []byte, int, bool, *Result) {}

func benchConn(i int, rs []*RealServer, withHelper bool) *Conn {
	c := &Conn{Session: benchSession(i), Service: benchService, Real: rs[i%len(rs)]}
	if withHelper {
		c.help = &helped{helper: nopHelper{}}
	}
	return c
}

func benchTable(n int, rs []*RealServer, helped bool) (*Table, []*Conn) {
	t := NewTable()
	conns := make([]*Conn, n)
	for i := range conns {
		conns[i] = benchConn(i, rs, helped)
		t.Insert(conns[i])
	}
	return t, conns
}

// BenchmarkTableLookup finds connections of a table of each size by both
// directions' keys and by the VIP, cycling through all of them.
func BenchmarkTableLookup(b *testing.B) {
	rs := servers(1, 1, 1, 1, 1, 1, 1, 1)
	for _, size := range tableSizes {
		t, conns := benchTable(size.n, rs, true)
		if t.Len() != size.n {
			b.Fatalf("Len %d", t.Len())
		}
		b.Run(size.name, func(b *testing.B) {
			b.Run("fromClient", func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					c := conns[i%len(conns)]
					if got, _ := t.Lookup(c.Client, c.Server); got != c {
						b.Fatal("miss")
					}
					i++
				}
			})
			b.Run("fromServer", func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					c := conns[i%len(conns)]
					if got, dir := t.Lookup(c.Server, c.Client); got != c || dir != FromServer {
						b.Fatal("miss")
					}
					i++
				}
			})
			b.Run("VIP", func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					c := conns[i%len(conns)]
					if t.LookupVIP(c.Client, c.VIP) != c {
						b.Fatal("miss")
					}
					i++
				}
			})
			b.Run("miss", func(b *testing.B) {
				b.ReportAllocs()
				src, dst := netip.MustParseAddrPort("192.0.2.1:1"), netip.MustParseAddrPort("192.0.2.2:2")
				for b.Loop() {
					if c, _ := t.Lookup(src, dst); c != nil {
						b.Fatal("hit")
					}
				}
			})
		})
	}
}

// BenchmarkTableInsert inserts into a full table of each size at steady
// state: every insert reuses an existing connection's client port (and so
// replaces it, as a new connection from a reused port does), with another
// real server, so the table keeps its size and both keys change. The Conns
// are built outside the timer.
func BenchmarkTableInsert(b *testing.B) {
	rs := servers(1, 1, 1, 1, 1, 1, 1, 1)
	for _, size := range tableSizes {
		t, conns := benchTable(size.n, rs, true)
		alt := make([]*Conn, size.n)
		for i := range alt {
			alt[i] = benchConn(i, rs, true)
			alt[i].Server = netip.AddrPortFrom(netip.AddrFrom4([4]byte{172, 17, 0, byte(1 + i%8)}), 21)
		}
		b.Run(size.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				k := i % size.n
				if (i/size.n)%2 == 0 {
					t.Insert(alt[k])
				} else {
					t.Insert(conns[k])
				}
				i++
			}
			if t.Len() != size.n {
				b.Fatalf("Len %d", t.Len())
			}
		})
	}
}

// BenchmarkMemoryPerConn inserts 1M connections and reports the heap they
// take, Conn structs and table entries, per connection: plain balanced
// ones, and helped ones (FTP control connections) with their stream state.
func BenchmarkMemoryPerConn(b *testing.B) {
	const n = 1_000_000
	rs := servers(1, 1, 1, 1, 1, 1, 1, 1)
	for _, helped := range []bool{false, true} {
		name := "plain"
		if helped {
			name = "helped"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				b.StartTimer()
				t, _ := benchTable(n, rs, helped) // the table alone keeps the Conns
				b.StopTimer()
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/conn")
				runtime.KeepAlive(t)
				b.StartTimer()
			}
			b.ReportMetric(float64(unsafe.Sizeof(Conn{})), "B/Conn-struct")
		})
	}
}

// TestConnLayout logs the sizes that make up a connection's memory.
func TestConnLayout(t *testing.T) {
	t.Log(connLayout())
}

func connLayout() string {
	var c Conn
	var h helped
	return fmt.Sprintf("Conn %d B: Session %d (3 netip.AddrPort of %d), Service+Real %d, mu %d, state %d, seen %d, help pointer %d; "+
		"helped %d B (only with a helper): helper %d, streams %d (stream %d: carry %d, rel %d, edits %d; streamEdit %d), open %d, clientNAT %d; "+
		"map slot (connKey %d + *Conn %d), one per plain connection, two per helped one",
		unsafe.Sizeof(c), unsafe.Sizeof(c.Session), unsafe.Sizeof(netip.AddrPort{}),
		unsafe.Sizeof(c.Service)+unsafe.Sizeof(c.Real), unsafe.Sizeof(c.mu), unsafe.Sizeof(c.state),
		unsafe.Sizeof(c.seen), unsafe.Sizeof(c.help),
		unsafe.Sizeof(h), unsafe.Sizeof(h.helper), unsafe.Sizeof(h.streams),
		unsafe.Sizeof(h.streams[0]), unsafe.Sizeof(h.streams[0].carry), unsafe.Sizeof(h.streams[0].rel),
		unsafe.Sizeof(h.streams[0].edits), unsafe.Sizeof(streamEdit{}), unsafe.Sizeof(h.open), unsafe.Sizeof(h.clientNAT),
		unsafe.Sizeof(connKey{}), unsafe.Sizeof(&c))
}

// TestTableMemory reports the Go heap a table of 10k and 100k connections
// takes (bytes per connection, helped and not), for docs/BENCHMARKS.md.
// It only runs with NFH_TABLE_MEM=1 (make bench runs it):
//
//	NFH_TABLE_MEM=1 go test -run '^TestTableMemory$' -v ./ipvs
func TestTableMemory(t *testing.T) {
	if os.Getenv("NFH_TABLE_MEM") != "1" {
		t.Skip("NFH_TABLE_MEM=1 runs it")
	}
	rs := servers(1, 1, 1, 1, 1, 1, 1, 1)
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	for _, helped := range []bool{false, true} {
		for _, n := range []int{10_000, 100_000} {
			before := heap()
			tb, conns := benchTable(n, rs, helped)
			after := heap()
			t.Logf("table-memory conns=%d helped=%v heap_bytes=%d bytes_per_conn=%.0f", n, helped, after-before, float64(after-before)/float64(n))
			runtime.KeepAlive(tb)
			runtime.KeepAlive(conns)
		}
	}
}
