package ipvs

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

func svcOf(t *testing.T, vip string, sched string, servers ...*RealServer) *Service {
	t.Helper()
	s, err := NewService("s", ap(vip), sched, nil, servers)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestReconfigure(t *testing.T) {
	a, b := &RealServer{Addr: ap("10.0.0.11:21"), Weight: 1}, &RealServer{Addr: ap("10.0.0.12:21"), Weight: 1}
	e, err := NewEngine([]*Service{svcOf(t, "198.51.100.10:21", "rr", a, b), NewAddOn("fwd", ap("198.51.100.20:21"), nil, 0)}, Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	addOnMark := e.Services()[1].Mark
	if a.Mark == 0 || b.Mark == 0 || addOnMark == 0 || a.Mark == b.Mark || a.Mark == addOnMark {
		t.Fatalf("marks %#x %#x %#x", a.Mark, b.Mark, addOnMark)
	}
	w := e.NewWorker()
	client := ap("203.0.113.2:40000")
	w.Process(seg(client, vip, 100, 0, syn, ""), 0)
	old := e.Table.LookupVIP(client, vip)

	// b leaves, a gets weight 3, c joins; the add-on stays.
	c := &RealServer{Addr: ap("10.0.0.13:21"), Weight: 1}
	next := []*Service{
		svcOf(t, "198.51.100.10:21", "wrr", &RealServer{Addr: a.Addr, Weight: 3}, c),
		NewAddOn("fwd", ap("198.51.100.20:21"), nil, 0),
	}
	commit, err := e.Prepare(next)
	if err != nil {
		t.Fatal(err)
	}
	if next[0].Servers[0] != a || a.Weight != 1 {
		t.Fatalf("a not reused, or its weight changed before commit")
	}
	if c.Mark == 0 || c.Mark == a.Mark || c.Mark == addOnMark || next[1].Mark != addOnMark {
		t.Errorf("marks after prepare: c %#x a %#x add-on %#x (was %#x)", c.Mark, a.Mark, next[1].Mark, addOnMark)
	}
	// Nothing runs the new configuration yet.
	if e.Services()[0] == next[0] {
		t.Fatal("prepare switched the workers over")
	}
	commit()
	if a.Weight != 3 || e.Services()[0] != next[0] {
		t.Fatalf("commit: weight %d", a.Weight)
	}
	// New connections see the new servers; the old one keeps its server.
	seen := map[*RealServer]int{}
	for i := range 8 {
		cl := netip.AddrPortFrom(client.Addr(), uint16(41000+i))
		w.Process(seg(cl, vip, 100, 0, syn, ""), 0)
		seen[e.Table.LookupVIP(cl, vip).Real]++
	}
	if seen[b] != 0 || seen[a] != 6 || seen[c] != 2 {
		t.Errorf("after reload: a %d, b %d, c %d; want 6, 0, 2", seen[a], seen[b], seen[c])
	}
	if got := e.Table.LookupVIP(client, vip); got != old || got.Real == nil {
		t.Errorf("existing connection lost")
	}
}

func TestReconfigureKeepsPersistence(t *testing.T) {
	a, b := &RealServer{Addr: ap("10.0.0.11:21"), Weight: 1}, &RealServer{Addr: ap("10.0.0.12:21"), Weight: 1}
	s := svcOf(t, "198.51.100.10:21", "rr", a, b)
	s.Persist = NewPersistence(time.Hour, 32, 128)
	e, err := NewEngine([]*Service{s}, Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	first := s.Schedule(ap("203.0.113.2:1"))
	other := a
	if first == a {
		other = b
	}
	if again := s.Schedule(ap("203.0.113.2:2")); again != first {
		t.Fatal("persistence did not keep the client's server")
	}
	// The client's server leaves: its template goes; the other persists.
	n := svcOf(t, "198.51.100.10:21", "rr", &RealServer{Addr: other.Addr, Weight: 1})
	n.Persist = NewPersistence(time.Hour, 32, 128)
	commit, err := e.Prepare([]*Service{n})
	if err != nil {
		t.Fatal(err)
	}
	commit()
	if n.Persist != s.Persist {
		t.Fatal("persistence table not carried over")
	}
	if got := n.Schedule(ap("203.0.113.2:3")); got != other {
		t.Errorf("client sent to %v after its server left", got.Addr)
	}
}

func TestActiveInactiveCounts(t *testing.T) {
	c := openConn(t, "x", 1000)
	rs := c.e.Services()[0].Servers[0]
	if rs.Inactive.Load() != 1 || rs.Active.Load() != 0 {
		t.Fatalf("after handshake start: active %d inactive %d", rs.Active.Load(), rs.Inactive.Load())
	}
	c.clientAck(1001)
	if rs.Active.Load() != 1 || rs.Inactive.Load() != 0 {
		t.Fatalf("established: active %d inactive %d", rs.Active.Load(), rs.Inactive.Load())
	}
	c.server(1001, finAck, "")
	if rs.Active.Load() != 0 || rs.Inactive.Load() != 1 {
		t.Fatalf("closing: active %d inactive %d", rs.Active.Load(), rs.Inactive.Load())
	}
	c.e.Table.Expire(now() + int64(time.Hour))
	if rs.Active.Load() != 0 || rs.Inactive.Load() != 0 {
		t.Fatalf("expired: active %d inactive %d", rs.Active.Load(), rs.Inactive.Load())
	}
}

func TestConntrackDestroyRemoves(t *testing.T) {
	c := openConn(t, "x", 1000)
	conn := c.e.Table.LookupVIP(client, vip)
	// Just active: a reused tuple's old entry going must not take it.
	c.e.ConntrackDestroyed(false, client, vip, 0, 0)
	if c.e.Table.LookupVIP(client, vip) != conn {
		t.Fatal("a connection active right now was removed")
	}
	conn.mu.Lock()
	conn.seen -= int64(time.Minute)
	conn.mu.Unlock()
	c.e.ConntrackDestroyed(true, client, vip, 30, 31000) // a UDP flow's: not this connection's
	if c.e.Table.LookupVIP(client, vip) != conn {
		t.Fatal("a UDP flow's end removed the TCP connection")
	}
	c.e.ConntrackDestroyed(false, client, vip, 30, 31000)
	if c.e.Table.LookupVIP(client, vip) != nil || c.e.Table.Len() != 0 {
		t.Fatal("connection kept after its conntrack entry went")
	}
	if c.e.Stats.ConntrackGone.Load() != 1 {
		t.Errorf("counted %d", c.e.Stats.ConntrackGone.Load())
	}
	// Its server's count went with it; its traffic stays counted.
	if rs := conn.Real; rs.Active.Load()+rs.Inactive.Load() != 0 || rs.Packets.Load() != 30 || rs.Bytes.Load() != 31000 {
		t.Errorf("server: active %d inactive %d packets %d bytes %d", rs.Active.Load(), rs.Inactive.Load(), rs.Packets.Load(), rs.Bytes.Load())
	}
}

func udpPacket(src, dst netip.AddrPort) []byte {
	b := []byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0}
	b = append(b, src.Addr().AsSlice()...)
	b = append(b, dst.Addr().AsSlice()...)
	return append(b, byte(src.Port()>>8), byte(src.Port()), byte(dst.Port()>>8), byte(dst.Port()), 0, 8, 0, 0)
}

func TestUDPFlowScheduledOnce(t *testing.T) {
	a, b := &RealServer{Addr: ap("10.0.0.11:53"), Weight: 1}, &RealServer{Addr: ap("10.0.0.12:53"), Weight: 1}
	s := svcOf(t, "198.51.100.10:53", "rr", a, b)
	s.UDP = true
	tcp := svcOf(t, "198.51.100.10:53", "rr", &RealServer{Addr: ap("10.0.0.13:53"), Weight: 1})
	e, err := NewEngine([]*Service{s, tcp}, Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	w := e.NewWorker()
	cl := ap("203.0.113.2:40000")
	v := w.Process(udpPacket(cl, ap("198.51.100.10:53")), 0)
	if !v.SetMark || v.Mark != a.Mark {
		t.Fatalf("first flow: %+v, want a's mark %#x", v, a.Mark)
	}
	// A repeat of the first packet (conntrack lost, say) keeps the server;
	// another flow gets the next one; the TCP service on the same VIP and
	// port is another service.
	if v := w.Process(udpPacket(cl, ap("198.51.100.10:53")), 0); v.Mark != a.Mark {
		t.Errorf("repeat: mark %#x", v.Mark)
	}
	if v := w.Process(udpPacket(ap("203.0.113.2:40001"), ap("198.51.100.10:53")), 0); v.Mark != b.Mark {
		t.Errorf("second flow: mark %#x, want b's %#x", v.Mark, b.Mark)
	}
	if e.UDP.Len() != 2 || e.Table.Len() != 0 {
		t.Errorf("tables: udp %d tcp %d", e.UDP.Len(), e.Table.Len())
	}
	if v := w.Process(udpPacket(cl, ap("198.51.100.10:54")), 0); v.SetMark {
		t.Errorf("UDP to no service scheduled")
	}
	// The kernel ends the flow: it leaves the table and its server's count.
	c := e.UDP.LookupVIP(cl, ap("198.51.100.10:53"))
	c.mu.Lock()
	c.seen -= int64(time.Minute)
	c.mu.Unlock()
	e.ConntrackDestroyed(true, cl, ap("198.51.100.10:53"), 1, 28)
	if e.UDP.Len() != 1 || a.Inactive.Load() != 0 {
		t.Errorf("after destroy: %d flows, a inactive %d", e.UDP.Len(), a.Inactive.Load())
	}
}

func TestPlainConnectionStateFromConntrack(t *testing.T) {
	a := &RealServer{Addr: ap("10.0.0.11:80"), Weight: 1}
	e, err := NewEngine([]*Service{svcOf(t, "198.51.100.10:80", "lc", a)}, Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	cl, v := ap("203.0.113.2:40000"), ap("198.51.100.10:80")
	e.NewWorker().Process(seg(cl, v, 100, 0, syn, ""), 0)
	e.ConntrackUpdated(cl, v, StateEstablished)
	if a.Active.Load() != 1 || a.Inactive.Load() != 0 {
		t.Fatalf("established: active %d inactive %d", a.Active.Load(), a.Inactive.Load())
	}
	e.ConntrackUpdated(cl, v, StateFinWait)
	if a.Active.Load() != 0 || a.Inactive.Load() != 1 {
		t.Fatalf("time wait: active %d inactive %d", a.Active.Load(), a.Inactive.Load())
	}
}

func TestNeedsConntrackStates(t *testing.T) {
	for _, c := range []struct {
		sched  string
		helped bool
		want   bool
	}{{"rr", false, false}, {"mh", false, false}, {"lc", false, true}, {"wlc", false, true}, {"nq", true, false}} {
		s := svcOf(t, "198.51.100.10:80", c.sched, &RealServer{Addr: ap("10.0.0.11:80"), Weight: 1})
		if c.helped {
			s.Helper = lineHelper{}
		}
		e, err := NewEngine([]*Service{s}, Options{MarkMask: 0x00ff0000})
		if err != nil {
			t.Fatal(err)
		}
		if got := e.NeedsConntrackStates(); got != c.want {
			t.Errorf("%s helped=%v: %v", c.sched, c.helped, got)
		}
	}
}

func TestLiveListsHelpedConnections(t *testing.T) {
	c := openConn(t, "x", 1000)
	vips, servers := c.e.Live()
	if len(vips) != 1 || vips[0] != vip || len(servers) != 1 || servers[0] != rs1 {
		t.Errorf("live %v %v", vips, servers)
	}
}

// A helped control connection idle during a long transfer shows the daemon
// nothing (its pure ACKs and keepalives pass it by): it stays as long as
// conntrack holds it, not an IPVS timeout.
func TestHelpedIdleLivesWithConntrack(t *testing.T) {
	asked := 0
	var there bool
	var err error
	alive := func(cl, v netip.AddrPort) (bool, error) {
		if cl != client || v != vip {
			t.Errorf("asked about %v -> %v", cl, v)
		}
		asked++
		return there, err
	}
	c := openConnWith(t, "x", 1000, Options{Alive: alive})
	c.clientAck(1001)
	conn := c.e.Table.LookupVIP(client, vip)
	if conn.State() != StateEstablished {
		t.Fatalf("state %v", conn.State())
	}
	start := now()
	min := int64(time.Minute)
	if n := c.e.Table.Expire(start + 16*min); n != 0 || c.e.Table.LookupVIP(client, vip) != conn {
		t.Fatal("idle helped connection expired after 16 minutes")
	}
	// check runs checkIdle at at, conntrack answering there, err.
	check := func(at int64, answer bool, answerErr error) int {
		there, err = answer, answerErr
		return c.e.checkIdle(at)
	}
	// Not idle long enough: conntrack is not asked.
	check(start+14*min, false, nil)
	if asked != 0 {
		t.Fatalf("asked after 14 minutes")
	}
	// Conntrack holds it: it stays, and is not asked again for a while.
	if n := check(start+16*min, true, nil); n != 0 || asked != 1 {
		t.Fatalf("gone %d, asked %d", n, asked)
	}
	check(start+20*min, false, nil)
	if asked != 1 || c.e.Table.LookupVIP(client, vip) != conn {
		t.Fatalf("asked again within 15 minutes (%d), or removed", asked)
	}
	// Conntrack cannot answer: it stays.
	if n := check(start+32*min, false, errors.New("no conntrack")); n != 0 || asked != 2 {
		t.Fatalf("gone %d after an error, asked %d", n, asked)
	}
	// The backstop: conntrack's own established timeout after the last
	// answer that it holds the connection.
	day := 24 * 60 * min
	if n := c.e.Table.Expire(start + 5*day); n != 0 {
		t.Fatal("expired before 5 days from conntrack's last word")
	}
	// Gone from conntrack (its destroy event lost): it leaves.
	if n := check(start+48*min, false, nil); n != 1 || asked != 3 {
		t.Fatalf("gone %d, asked %d", n, asked)
	}
	if c.e.Table.LookupVIP(client, vip) != nil || c.e.Stats.ConntrackGone.Load() != 1 {
		t.Fatalf("still there, or not counted (%d)", c.e.Stats.ConntrackGone.Load())
	}
}

// With no answer from conntrack ever, a helped connection lasts no longer
// than conntrack's own established timeout after its last packet.
func TestHelpedIdleBackstop(t *testing.T) {
	c := openConn(t, "x", 1000)
	c.clientAck(1001)
	day := 24 * int64(time.Hour)
	// Without Options.Alive nobody is asked.
	if n := c.e.checkIdle(now() + day); n != 0 || c.e.Table.Len() != 1 {
		t.Fatal("idle check without a conntrack to ask removed the connection")
	}
	if n := c.e.Table.Expire(now() + 4*day); n != 0 {
		t.Fatal("expired within 4 days")
	}
	if n := c.e.Table.Expire(now() + 5*day + int64(time.Minute)); n != 1 {
		t.Fatal("kept past 5 days")
	}
	// A plain balanced connection keeps IPVS's 15 minutes.
	a := &RealServer{Addr: ap("10.0.0.11:80"), Weight: 1}
	e, err := NewEngine([]*Service{svcOf(t, "198.51.100.10:80", "rr", a)}, Options{MarkMask: 0x00ff0000})
	if err != nil {
		t.Fatal(err)
	}
	cl, v := ap("203.0.113.2:40000"), ap("198.51.100.10:80")
	e.NewWorker().Process(seg(cl, v, 100, 0, syn, ""), 0)
	pc := e.Table.LookupVIP(cl, v)
	pc.mu.Lock()
	pc.setState(StateEstablished, now())
	pc.mu.Unlock()
	if n := e.Table.Expire(now() + 16*int64(time.Minute)); n != 1 {
		t.Fatal("plain connection kept past 15 minutes")
	}
}

// requestHelper is a DatagramHelper that takes datagrams starting "REQ".
type requestHelper struct{}

func (requestHelper) Name() string { return "req" }

func (requestHelper) Request(d []byte) (bool, string) {
	if len(d) < 3 || string(d[:3]) != "REQ" {
		return false, ""
	}
	return true, string(d)
}

// TestDatagramRequests: a UDP service's datagram helper reads each queued
// datagram of a flow: a request's verdict carries ReplyMark beside the
// server's mark (its copies too, with the same server), the flow's view
// shows it; anything else passes with the server's mark alone, counted.
func TestDatagramRequests(t *testing.T) {
	const replyMark = 0x08000000
	a, b := &RealServer{Addr: ap("10.0.0.11:69"), Weight: 1}, &RealServer{Addr: ap("10.0.0.12:69"), Weight: 1}
	s := svcOf(t, "198.51.100.10:69", "rr", a, b)
	s.UDP, s.Datagram = true, requestHelper{}
	if s.InKernel() {
		t.Error("a service with a datagram helper is scheduled in the kernel")
	}
	e, err := NewEngine([]*Service{s}, Options{MarkMask: 0x00ff0000, ReplyMark: replyMark})
	if err != nil {
		t.Fatal(err)
	}
	w := e.NewWorker()
	cl, vip := ap("203.0.113.2:40000"), ap("198.51.100.10:69")
	request := func(src netip.AddrPort, payload string) Verdict {
		p := udpPacket(src, vip)
		p[3] += byte(len(payload))
		p[25] += byte(len(payload))
		return w.Process(append(p, payload...), 0)
	}
	for i := range 2 {
		if v := request(cl, "REQ file"); !v.SetMark || v.Mark != a.Mark|replyMark {
			t.Errorf("request %d: %+v, want a's mark %#x and ReplyMark", i, v, a.Mark)
		}
	}
	if v := request(ap("203.0.113.2:40001"), "REQ other"); v.Mark != b.Mark|replyMark {
		t.Errorf("another client port: mark %#x, want b's and ReplyMark", v.Mark)
	}
	if v := request(ap("203.0.113.2:40002"), "ACK"); !v.SetMark || v.Mark&replyMark != 0 {
		t.Errorf("no request: %+v", v)
	}
	if got := e.Stats.ReplyFlows.Load(); got != 3 {
		t.Errorf("reply flows %d, want 3", got)
	}
	if got := e.Stats.NotRequests.Load(); got != 1 {
		t.Errorf("not requests %d, want 1", got)
	}
	for _, v := range e.ConnViews() {
		if v.Client == cl && (v.About != "REQ file" || v.Helper != "req" || !v.UDP) {
			t.Errorf("view %+v", v)
		}
	}
}

// TestReplyFlows: conntrack's events tell a request's reply flows: one
// from the request's server starts under it (another server's does not);
// the request's own entry may go while a reply runs, and the flow leaves
// the table with its last reply.
func TestReplyFlows(t *testing.T) {
	a := &RealServer{Addr: ap("10.0.0.11:69"), Weight: 1}
	s := svcOf(t, "198.51.100.10:69", "rr", a)
	s.UDP, s.Datagram = true, requestHelper{}
	e, err := NewEngine([]*Service{s}, Options{MarkMask: 0x00ff0000, ReplyMark: 0x08000000})
	if err != nil {
		t.Fatal(err)
	}
	w := e.NewWorker()
	cl, vip := ap("203.0.113.2:40000"), ap("198.51.100.10:69")
	p := udpPacket(cl, vip)
	p[3] += 3
	p[25] += 3
	w.Process(append(p, "REQ"...), 0)
	if e.ReplyStarted(ap("10.0.0.12:51000"), cl, cl, ap("198.51.100.10:51000")) {
		t.Error("a flow from another server was taken for the reply")
	}
	if !e.ReplyStarted(ap("10.0.0.11:51000"), cl, cl, ap("198.51.100.10:51000")) {
		t.Fatal("the server's reply flow was not taken")
	}
	views := e.ConnViews()
	if len(views) != 1 || len(views[0].Replies) != 1 || views[0].Replies[0].Server != ap("10.0.0.11:51000") || views[0].Replies[0].VIP != ap("198.51.100.10:51000") {
		t.Fatalf("views %+v", views)
	}
	// The request's entry goes (30 s unanswered on its own ports): the
	// flow stays for its reply.
	c := e.UDP.LookupVIP(cl, vip)
	c.mu.Lock()
	c.seen -= int64(time.Minute)
	c.mu.Unlock()
	e.ConntrackDestroyed(true, cl, vip, 1, 31)
	if e.UDP.Len() != 1 {
		t.Fatal("the request left the table while its reply runs")
	}
	e.ConntrackDestroyed(true, ap("10.0.0.11:51000"), cl, 4000, 2000000)
	if e.UDP.Len() != 0 || len(e.replies) != 0 {
		t.Errorf("after its reply ended: %d flows, %d replies indexed", e.UDP.Len(), len(e.replies))
	}
	if got := e.Stats.RepliesStarted.Load(); got != 1 {
		t.Errorf("replies started %d", got)
	}
}

// TestPendingRequests: a client host has at most MaxPending requests
// awaiting their answer; one more is dropped and counted, a copy of a
// pending one is not; an answer (its reply flow) frees its place.
func TestPendingRequests(t *testing.T) {
	a := &RealServer{Addr: ap("10.0.0.11:69"), Weight: 1}
	s := svcOf(t, "198.51.100.10:69", "rr", a)
	s.UDP, s.Datagram = true, requestHelper{}
	s.Policy.MaxPending = 2
	e, err := NewEngine([]*Service{s}, Options{MarkMask: 0x00ff0000, ReplyMark: 0x08000000})
	if err != nil {
		t.Fatal(err)
	}
	w := e.NewWorker()
	vip := ap("198.51.100.10:69")
	request := func(client string) Verdict {
		p := udpPacket(ap(client), vip)
		p[3] += 3
		p[25] += 3
		return w.Process(append(p, "REQ"...), 0)
	}
	for _, cl := range []string{"203.0.113.2:40000", "203.0.113.2:40001", "203.0.113.2:40000"} {
		if v := request(cl); v.Drop || v.Mark&0x08000000 == 0 {
			t.Errorf("%s: %+v, want admitted", cl, v)
		}
	}
	if v := request("203.0.113.2:40002"); !v.Drop {
		t.Errorf("a third pending request: %+v, want dropped", v)
	}
	if v := request("203.0.113.3:40002"); v.Drop {
		t.Error("another host's request was dropped")
	}
	if got := e.Stats.Refused[RefusePending].Load(); got != 1 {
		t.Errorf("refused pending %d", got)
	}
	e.ReplyStarted(ap("10.0.0.11:50000"), ap("203.0.113.2:40000"), ap("203.0.113.2:40000"), ap("198.51.100.10:50000"))
	if v := request("203.0.113.2:40002"); v.Drop {
		t.Error("dropped after an answer freed a place")
	}
}
