package ipvs

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

// TestDownSkipped: every scheduler skips a Down server, whatever its weight
// or load, and gives it connections again once it is back.
func TestDownSkipped(t *testing.T) {
	for _, name := range allSchedulers {
		rs := servers(1, 2, 3)
		s := newSched(t, name)
		clients := clientAddrs(3000, 11)
		picks := func() map[*RealServer]int {
			got := map[*RealServer]int{}
			for _, c := range clients {
				got[s.Pick(rs, c)]++
			}
			return got
		}
		// The least loaded: the load schedulers take it (Pick itself
		// counts nothing), while it is up.
		setLoad(rs[1], 5, 5)
		setLoad(rs[2], 5, 5)
		if got := picks(); got[rs[0]] == 0 || got[nil] != 0 {
			t.Fatalf("%s: %v before", name, got)
		}
		rs[0].Down = true
		got := picks()
		if got[rs[0]] != 0 || got[nil] != 0 || got[rs[1]]+got[rs[2]] != len(clients) || !byLoad(s) && (got[rs[1]] == 0 || got[rs[2]] == 0) {
			t.Errorf("%s: down: %d to the down server, %d nil, %d and %d to the others", name, got[rs[0]], got[nil], got[rs[1]], got[rs[2]])
		}
		rs[0].Down = false
		if got := picks(); got[rs[0]] == 0 || got[nil] != 0 {
			t.Errorf("%s: the server back up got %d, nil %d", name, got[rs[0]], got[nil])
		}
	}
}

// TestAllDown: with every server down no scheduler picks one.
func TestAllDown(t *testing.T) {
	for _, name := range allSchedulers {
		rs := servers(1, 2)
		s := newSched(t, name)
		s.Pick(rs, netip.AddrPort{})
		rs[0].Down, rs[1].Down = true, true
		for _, c := range clientAddrs(100, 12) {
			if p := s.Pick(rs, c); p != nil {
				t.Fatalf("%s picked down %v", name, p.Addr)
			}
		}
	}
}

// TestTablesFollowDown: wrr's proportions, sh's and mh's tables change when
// a server goes down and come back as they were when it is up again; mh
// moves only the down server's clients (as if it were removed).
func TestTablesFollowDown(t *testing.T) {
	rs := servers(1, 2, 3)
	got := counts(t, "wrr", rs, 600)
	if got[0] != 100 || got[1] != 200 || got[2] != 300 {
		t.Fatalf("wrr before: %v", got)
	}
	w := newSched(t, "wrr")
	rs[2].Down = true
	n := map[int]int{}
	for range 300 {
		n[index(rs, w.Pick(rs, netip.AddrPort{}))]++
	}
	if n[0] != 100 || n[1] != 200 {
		t.Errorf("wrr with the third down: %v", n)
	}
	rs[2].Down = false
	n = map[int]int{}
	for range 600 {
		n[index(rs, w.Pick(rs, netip.AddrPort{}))]++
	}
	if n[0] != 100 || n[1] != 200 || n[2] != 300 {
		t.Errorf("wrr back up: %v", n)
	}

	clients := clientAddrs(5000, 13)
	for _, name := range []string{"sh", "mh"} {
		rs := servers(1, 1, 1, 1)
		s := newSched(t, name)
		before := make([]*RealServer, len(clients))
		for i, c := range clients {
			before[i] = s.Pick(rs, c)
		}
		rs[1].Down = true
		moved := 0
		for i, c := range clients {
			p := s.Pick(rs, c)
			if p == nil || p == rs[1] {
				t.Fatalf("%s: client %v got %v with server 1 down", name, c, p)
			}
			if before[i] != rs[1] && p != before[i] {
				moved++
			}
		}
		if name == "mh" && moved > len(clients)/10 {
			t.Errorf("mh: %d of the other clients moved", moved)
		}
		rs[1].Down = false
		for i, c := range clients {
			if p := s.Pick(rs, c); p != before[i] {
				t.Fatalf("%s: client %v on %v after the server came back, %v before", name, c, p, before[i])
			}
		}
	}
}

func sorrySvc(t *testing.T, sched string, weights ...int) *Service {
	t.Helper()
	s := svcOf(t, "198.51.100.10:21", sched, servers(weights...)...)
	s.Sorry = &RealServer{Addr: ap("10.0.9.9:21"), Weight: 1}
	return s
}

// TestSorry: the sorry server takes new connections only when no server
// can, with every scheduler.
func TestSorry(t *testing.T) {
	for _, name := range allSchedulers {
		s := sorrySvc(t, name, 1, 1)
		if _, err := NewEngine([]*Service{s}, Options{MarkMask: 0x00ff0000}); err != nil {
			t.Fatal(err)
		}
		clients := clientAddrs(200, 14)
		s.Servers[0].Down = true
		for _, c := range clients {
			if p := s.Schedule(c); p != s.Servers[1] {
				t.Fatalf("%s: one server up: got %v", name, p.Addr)
			}
		}
		s.Servers[1].Weight = 0 // down and quiesced: no server can
		for _, c := range clients {
			if p := s.Schedule(c); p != s.Sorry {
				t.Fatalf("%s: all out: got %v, want the sorry server", name, p)
			}
		}
		if s.Sorry.Conns.Load() != uint64(len(clients)) {
			t.Errorf("%s: sorry server counted %d connections", name, s.Sorry.Conns.Load())
		}
		s.Sorry.Down = true
		if p := s.Schedule(clients[0]); p != nil {
			t.Errorf("%s: a down sorry server got a connection", name)
		}
		s.Servers[0].Down = false
		if p := s.Schedule(clients[0]); p != s.Servers[0] {
			t.Errorf("%s: back up: got %v", name, p)
		}
	}
	// sh: a client whose bucket holds a quiesced server gets nothing
	// (the kernel's default), not the sorry server, while others can.
	s := sorrySvc(t, "sh", 1, 0)
	for _, c := range clientAddrs(200, 15) {
		if p := s.Schedule(c); p == s.Sorry {
			t.Fatal("sh: sorry server chosen while a server is up")
		}
	}
}

// TestAllDownVerdicts: through the engine, a SYN or a UDP flow to a service
// whose servers are all down goes to the sorry server's mark, or gets no
// mark (counted in NoServer) without one.
func TestAllDownVerdicts(t *testing.T) {
	tcp := sorrySvc(t, "rr", 1, 1)
	udp := svcOf(t, "198.51.100.10:53", "wlc", servers(1)...)
	udp.UDP = true
	e, err := NewEngine([]*Service{tcp, udp}, Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	if !tcp.Sorry.Sorry {
		t.Error("the sorry server is not marked Sorry")
	}
	if m := tcp.Sorry.Mark; m == 0 || m == tcp.Servers[0].Mark || m == tcp.Servers[1].Mark || m == udp.Servers[0].Mark {
		t.Fatalf("sorry server's mark %#x", m)
	}
	for _, rs := range append(tcp.Servers, udp.Servers...) {
		e.SetStanding(rs, rs.Weight, true)
	}
	w := e.NewWorker()
	v := w.Process(seg(ap("203.0.113.2:40000"), vip, 100, 0, syn, ""), 0)
	if !v.SetMark || v.Mark != tcp.Sorry.Mark {
		t.Errorf("SYN with all down: %+v, want the sorry mark %#x", v, tcp.Sorry.Mark)
	}
	if c := e.Table.LookupVIP(ap("203.0.113.2:40000"), vip); c == nil || c.Real != tcp.Sorry || c.Server != tcp.Sorry.Addr {
		t.Errorf("connection to the sorry server: %+v", c)
	}
	if v := w.Process(udpPacket(ap("203.0.113.2:40000"), ap("198.51.100.10:53")), 0); v.SetMark {
		t.Errorf("UDP with all down and no sorry server: %+v", v)
	}
	tcp.mu.Lock()
	tcp.Sorry.Down = true
	tcp.mu.Unlock()
	if v := w.Process(seg(ap("203.0.113.2:40001"), vip, 100, 0, syn, ""), 0); v.SetMark {
		t.Errorf("SYN with all down, the sorry server too: %+v", v)
	}
	if n := e.Stats.NoServer.Load(); n != 2 {
		t.Errorf("NoServer %d, want 2", n)
	}
}

// TestPersistenceDown: a template naming a down server is dropped, the
// client scheduled anew; SetStanding forgets them all at once.
func TestPersistenceDown(t *testing.T) {
	s := svcOf(t, "198.51.100.10:21", "rr", servers(1, 1)...)
	s.Persist = NewPersistence(time.Hour, 32, 128)
	e, err := NewEngine([]*Service{s}, Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	clients := clientAddrs(10, 16)
	first := map[netip.AddrPort]*RealServer{}
	for _, c := range clients {
		first[c] = s.Schedule(c)
	}
	a, b := s.Servers[0], s.Servers[1]
	e.SetStanding(a, 1, true)
	if n := s.Persist.Len(); n != 5 {
		t.Errorf("%d templates after a went down, want b's 5", n)
	}
	for _, c := range clients {
		if p := s.Schedule(c); p != b {
			t.Fatalf("client %v on %v with a down", c, p.Addr)
		}
	}
	e.SetStanding(a, 1, false) // back: its clients stay where they went
	for _, c := range clients {
		if p := s.Schedule(c); p != b {
			t.Errorf("client %v (first %v) now on %v", c, first[c].Addr, p.Addr)
		}
	}
	// Lookup alone drops a template to a down server.
	c := netip.MustParseAddr("192.0.2.99")
	s.Persist.Remember(c, a, now())
	a.Down = true
	if s.Persist.Lookup(c, now()) != nil {
		t.Error("Lookup returned a down server")
	}
	// The sorry server is not remembered: the client gets a real server
	// once one is back.
	s.Sorry = &RealServer{Addr: ap("10.0.9.9:21"), Weight: 1}
	b.Down = true
	if p := s.Schedule(ap("192.0.2.100:1")); p != s.Sorry {
		t.Fatalf("all down: %v", p)
	}
	b.Down = false
	if p := s.Schedule(ap("192.0.2.100:2")); p != b {
		t.Errorf("back up: %v", p)
	}
}

// TestReloadSorry: a sorry server that stays keeps its object and mark; one
// that moves gets a new mark; standings carry over at commit.
func TestReloadSorry(t *testing.T) {
	s := sorrySvc(t, "rr", 1, 1)
	e, err := NewEngine([]*Service{s}, Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	sorry, a := s.Sorry, s.Servers[0]
	sorry.Conns.Add(3)

	n := svcOf(t, "198.51.100.10:21", "rr", &RealServer{Addr: a.Addr, Weight: 2, Down: true})
	n.Sorry = &RealServer{Addr: sorry.Addr, Weight: 1}
	commit, err := e.Prepare([]*Service{n})
	if err != nil {
		t.Fatal(err)
	}
	if n.Sorry != sorry || n.Servers[0] != a || a.Down {
		t.Fatal("not carried over, or standing changed before commit")
	}
	commit()
	if !a.Down || a.Weight != 2 || sorry.Mark == 0 || sorry.Conns.Load() != 3 || !sorry.Sorry {
		t.Errorf("after commit: a down %v weight %d; sorry mark %#x conns %d", a.Down, a.Weight, sorry.Mark, sorry.Conns.Load())
	}
	if p := n.Schedule(ap("203.0.113.5:1")); p != sorry {
		t.Errorf("all down after reload: %v", p)
	}

	moved := &RealServer{Addr: ap("10.0.9.10:21"), Weight: 1}
	m := svcOf(t, "198.51.100.10:21", "rr", &RealServer{Addr: a.Addr, Weight: 2})
	m.Sorry = moved
	commit, err = e.Prepare([]*Service{m})
	if err != nil {
		t.Fatal(err)
	}
	commit()
	if moved.Mark == 0 || moved.Mark == a.Mark || m.Sorry != moved {
		t.Errorf("moved sorry server: mark %#x (a %#x)", moved.Mark, a.Mark)
	}
}

func TestViewDownSorry(t *testing.T) {
	s := sorrySvc(t, "rr", 1, 1)
	e, err := NewEngine([]*Service{s}, Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	e.SetStanding(s.Servers[1], 0, true)
	v := e.ServiceViews()[0]
	if len(v.Servers) != 3 {
		t.Fatalf("%d servers in the view", len(v.Servers))
	}
	if v.Servers[0].Down || v.Servers[0].Sorry || !v.Servers[1].Down || v.Servers[1].Weight != 0 {
		t.Errorf("servers: %+v %+v", v.Servers[0], v.Servers[1])
	}
	if last := v.Servers[2]; !last.Sorry || last.Addr != s.Sorry.Addr || last.Mark != s.Sorry.Mark {
		t.Errorf("last: %+v", last)
	}
}

// TestSetStandingConcurrent runs standing changes against scheduling (for
// -race).
func TestSetStandingConcurrent(t *testing.T) {
	s := sorrySvc(t, "wrr", 1, 2, 3)
	s.Persist = NewPersistence(time.Hour, 32, 128)
	e, err := NewEngine([]*Service{s}, Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range 2000 {
			e.SetStanding(s.Servers[i%3], 1+i%3, i%2 == 0)
		}
	}()
	go func() {
		defer wg.Done()
		for _, c := range clientAddrs(2000, 17) {
			if s.Schedule(c) == nil {
				t.Error("nil with a sorry server")
				return
			}
			_ = e.ServiceViews()
		}
	}()
	wg.Wait()
}
