package ipvs

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
)

// portHelper opens a passive channel for each server line "P <port>" and
// rewrites the port when the core chose another, or the line to "425 no
// port" when none was to be had.
type portHelper struct{ s *Session }

func (portHelper) Name() string                          { return "port" }
func (portHelper) Bind(s *Session, _ *Policy) ConnHelper { return portHelper{s} }

func (h portHelper) Inspect(dir Direction, data []byte, fixed int, fin bool, r *Result) {
	if dir != FromServer || !bytes.HasPrefix(data, []byte("P ")) || !bytes.HasSuffix(data, []byte("\n")) {
		return
	}
	text := data[2 : len(data)-1]
	port, err := strconv.Atoi(string(text))
	if err != nil {
		return
	}
	vip, ok := r.OpenPassive(netip.AddrPortFrom(h.s.Server.Addr(), uint16(port)))
	if !ok {
		// As the FTP helper's 425: the announcement gives way to a
		// longer reply that opens nothing.
		r.Refuse(RefuseNoPort)
		r.Replace(0, len(data)-1, []byte("425 no port"))
		return
	}
	if int(vip.Port()) != port {
		r.Replace(2, len(text), strconv.AppendUint(nil, uint64(vip.Port()), 10))
	}
}

func portEngine(t *testing.T, pol Policy) *Engine {
	t.Helper()
	return portEngineWith(t, pol, Options{})
}

// portEngineWith is portEngine built with opts (its mark mask aside).
func portEngineWith(t *testing.T, pol Policy, opts Options) *Engine {
	t.Helper()
	rs := []*RealServer{{Addr: rs1, Weight: 1, Mark: 1 << 16}, {Addr: ap("10.0.0.12:21"), Weight: 1, Mark: 2 << 16}}
	svc, err := NewService("port", vip, "rr", portHelper{}, rs)
	if err != nil {
		t.Fatal(err)
	}
	svc.Policy = pol
	opts.MarkMask = 0x00ff0000
	e, err := NewEngine([]*Service{svc}, opts)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// announce opens a control connection from cl and has its server announce port.
func announce(t *testing.T, e *Engine, w *Worker, cl netip.AddrPort, isn uint32, port string) Verdict {
	t.Helper()
	w.Process(seg(cl, vip, 100, 0, syn, ""), 0)
	c := e.Table.LookupVIP(cl, vip)
	w.Process(seg(c.Server, cl, isn, 101, syn|ack, ""), 0)
	return w.Process(seg(c.Server, cl, isn+1, 101, pshAck, "P "+port+"\n"), 0)
}

func TestPassivePortCollision(t *testing.T) {
	e := portEngine(t, DefaultPolicy)
	w := e.NewWorker()
	v1 := announce(t, e, w, client, 1000, "40000")
	if len(v1.Open) != 1 || v1.Open[0].VIP.Port() != 40000 || v1.Packet != nil {
		t.Fatalf("first announcement: %+v", v1)
	}
	// The same client address, another control connection (another user
	// behind the same NAT), whose server picked the same port.
	v2 := announce(t, e, w, ap("203.0.113.2:40001"), 2000, "40000")
	if len(v2.Open) != 1 || v2.Open[0].VIP.Port() != 40001 || v2.Open[0].Server.Port() != 40000 {
		t.Fatalf("colliding announcement: %+v", v2.Open)
	}
	if got := payloadOf(t, v2.Packet); got != "P 40001\n" {
		t.Errorf("collision not rewritten: %q", got)
	}
	// Another client address does not collide.
	v3 := announce(t, e, w, ap("203.0.113.3:40000"), 3000, "40000")
	if len(v3.Open) != 1 || v3.Open[0].VIP.Port() != 40000 {
		t.Errorf("other client: %+v", v3.Open)
	}
	// Service ports on the VIP are never handed out.
	v4 := announce(t, e, w, ap("203.0.113.4:40000"), 4000, "21")
	if len(v4.Open) != 1 || v4.Open[0].VIP.Port() == 21 {
		t.Errorf("VIP service port announced: %+v", v4.Open)
	}
}

func TestChannelLimitEvictsOldest(t *testing.T) {
	e := portEngine(t, Policy{MaxChannels: 1, ChannelTimeout: time.Minute})
	w := e.NewWorker()
	announce(t, e, w, client, 1000, "40000")
	c := e.Table.LookupVIP(client, vip)
	v := w.Process(seg(c.Server, client, 1009, 101, pshAck, "P 40002\n"), 0)
	if len(v.Open) != 1 || len(v.Close) != 1 || v.Close[0].VIP.Port() != 40000 {
		t.Fatalf("second channel: open %+v close %+v", v.Open, v.Close)
	}
	if e.Stats.Evicted.Load() != 1 {
		t.Errorf("evicted = %d", e.Stats.Evicted.Load())
	}
	// Its claim waits for late word of a data connection, but the channel
	// is gone: the datapath must delete its element.
	if e.Claimed(v.Close[0]) {
		t.Errorf("evicted channel still claimed: its element would stay")
	}
	if !e.Claimed(v.Open[0]) {
		t.Errorf("the new channel is not claimed")
	}
	// The evicted port is free again for another connection of the
	// client once word of its data connection came (or usedGrace passed).
	if v2 := announce(t, e, w, ap("203.0.113.2:40001"), 2000, "40000"); len(v2.Open) != 1 || v2.Open[0].VIP.Port() == 40000 {
		t.Errorf("evicted port reused at once: %+v", v2.Open)
	}
	e.ChannelUsed(client.Addr(), ap("198.51.100.10:40000"), netip.AddrPortFrom(c.Server.Addr(), 40000))
	if v3 := announce(t, e, w, ap("203.0.113.2:40002"), 3000, "40000"); len(v3.Open) != 1 || v3.Open[0].VIP.Port() != 40000 {
		t.Errorf("released port not reused: %+v", v3.Open)
	}
}

func TestExpiredConnectionReleasesClaims(t *testing.T) {
	e := portEngine(t, DefaultPolicy)
	w := e.NewWorker()
	announce(t, e, w, client, 1000, "40000")
	// Established and helped: it times out as conntrack would.
	if n := e.Table.Expire(now() + int64(helpedEstablished+time.Hour)); n != 1 {
		t.Fatalf("expired %d connections", n)
	}
	if len(e.channels.passive) != 0 {
		t.Errorf("claims left: %v", e.channels.passive)
	}
}

func payloadOf(t *testing.T, b []byte) string {
	t.Helper()
	_, p := (&tconn{t: t}).out(Verdict{Packet: b}, nil)
	return p
}

func TestRefusalLoggedAtOnceThenRateLimited(t *testing.T) {
	var buf bytes.Buffer
	e := portEngineWith(t, DefaultPolicy, Options{Log: slog.New(slog.NewTextHandler(&buf, nil))})
	w := e.NewWorker()
	w.now = 5 // right after start
	c := &Conn{Service: e.Services()[0]}
	w.refused(c, []Refusal{RefuseBounce, RefuseBounce})
	if n := strings.Count(buf.String(), "refused data channel"); n != 1 {
		t.Errorf("%d lines for two refusals in the first second, want 1:\n%s", n, buf.String())
	}
	w.now += 2e9
	w.refused(c, []Refusal{RefuseBounce})
	if n := strings.Count(buf.String(), "refused data channel"); n != 2 || e.Stats.Refused[RefuseBounce].Load() != 3 {
		t.Errorf("after 2 s: %d lines, %d counted", n, e.Stats.Refused[RefuseBounce].Load())
	}
}

// TestUsedChannelFreesPort: a channel whose data connection conntrack
// confirmed gives its VIP port back at once (the kernel removes an
// expectation that matched), and the datapath is told which to delete.
func TestUsedChannelFreesPort(t *testing.T) {
	e := portEngine(t, Policy{MaxChannels: 4, ChannelTimeout: time.Minute})
	w := e.NewWorker()
	announce(t, e, w, client, 1000, "40000")
	other := ap("203.0.113.2:40001")
	// Not a channel's data connection: nothing happens.
	if _, ok := e.ChannelUsed(client.Addr(), ap("198.51.100.10:40001"), rs1); ok {
		t.Fatal("a connection to an unannounced port ended a channel")
	}
	c := e.Table.LookupVIP(client, vip)
	// One that went elsewhere (its event late, the port another's by
	// now) does not end it.
	if _, ok := e.ChannelUsed(client.Addr(), ap("198.51.100.10:40000"), netip.AddrPortFrom(c.Server.Addr(), 40001)); ok {
		t.Fatal("a data connection to another server port ended the channel")
	}
	ch, ok := e.ChannelUsed(client.Addr(), ap("198.51.100.10:40000"), netip.AddrPortFrom(c.Server.Addr(), 40000))
	if !ok || ch.Kind != ChannelPassive || ch.VIP.Port() != 40000 || ch.Server.Port() != 40000 {
		t.Fatalf("used: %+v %v", ch, ok)
	}
	if e.Stats.Used.Load() != 1 || e.Claimed(ch) {
		t.Errorf("used %d, still claimed %v", e.Stats.Used.Load(), e.Claimed(ch))
	}
	if len(c.help.open) != 0 {
		t.Errorf("channel still open: %+v", c.help.open)
	}
	// Once: a second event for the same tuple finds nothing.
	if _, ok := e.ChannelUsed(client.Addr(), ap("198.51.100.10:40000"), netip.AddrPortFrom(c.Server.Addr(), 40000)); ok {
		t.Error("used twice")
	}
	// Another control connection of the same client gets the server's
	// own port again, and its element is then not deleted.
	v := announce(t, e, w, other, 2000, "40000")
	if len(v.Open) != 1 || v.Open[0].VIP.Port() != 40000 || !e.Claimed(ch) {
		t.Errorf("freed port not reused: %+v", v.Open)
	}
}

// TestControlEndFreesPorts: the server's FIN (or a reset) ends the
// channels its connection has not used; the client's FIN alone does not
// (a half-closed client may still connect).
func TestControlEndFreesPorts(t *testing.T) {
	e := portEngine(t, Policy{MaxChannels: 4, ChannelTimeout: time.Minute})
	w := e.NewWorker()
	announce(t, e, w, client, 1000, "40000")
	c := e.Table.LookupVIP(client, vip)
	w.Process(seg(c.Server, client, 1009, 101, pshAck, "P 40001\n"), 0)
	if v := w.Process(seg(client, c.Server, 101, 1017, finAck, ""), 0); len(v.Close) != 0 {
		t.Fatalf("client's FIN closed %+v", v.Close)
	}
	v := w.Process(seg(c.Server, client, 1017, 102, finAck, ""), 0)
	if len(v.Close) != 2 || len(c.help.open) != 0 {
		t.Fatalf("server's FIN: close %+v, open %+v", v.Close, c.help.open)
	}
	// The ports stay held a moment: word of a data connection that did
	// start may still come, and must not end the next channel on them.
	other := ap("203.0.113.2:40001")
	if v := announce(t, e, w, other, 2000, "40000"); len(v.Open) != 1 || v.Open[0].VIP.Port() == 40000 {
		t.Errorf("port taken during the grace: %+v", v.Open)
	}
	if _, ok := e.ChannelUsed(client.Addr(), ap("198.51.100.10:40000"), netip.AddrPortFrom(c.Server.Addr(), 40000)); ok {
		t.Error("late word ended a channel")
	}
	// That word frees the port; so does the grace running out.
	if v := announce(t, e, w, ap("203.0.113.2:40002"), 3000, "40000"); len(v.Open) != 1 || v.Open[0].VIP.Port() != 40000 {
		t.Errorf("port still held after its word came: %+v", v.Open)
	}
	for k, claim := range e.channels.passive {
		if claim.conn == c && (!claim.ended || claim.expires > now()+usedGrace) {
			t.Errorf("claim %v %+v held past the grace", k, claim)
		}
	}
}

// TestPortSearchWholeRange: a client address holding thousands of pending
// channels still gets a free port, found past them; only when every
// unprivileged port is held is the channel refused.
func TestPortSearchWholeRange(t *testing.T) {
	e := portEngine(t, DefaultPolicy)
	w := e.NewWorker()
	hold := func(port int) {
		key := passiveKey{client.Addr(), netip.AddrPortFrom(vip.Addr(), uint16(port))}
		e.channels.passive[key] = passiveClaim{conn: &Conn{}, expires: now() + int64(time.Hour)}
	}
	for p := 40000; p < 45000; p++ {
		hold(p)
	}
	v := announce(t, e, w, client, 1000, "40000")
	if len(v.Open) != 1 || v.Open[0].VIP.Port() != 45000 {
		t.Fatalf("past 5000 held ports: %+v", v.Open)
	}
	// Wrapping round at the top, clear of the privileged range.
	for p := 1024; p < 65536; p++ {
		if p != 2000 {
			hold(p)
		}
	}
	v = announce(t, e, w, ap("203.0.113.2:40001"), 2000, "65000")
	if len(v.Open) != 1 || v.Open[0].VIP.Port() != 2000 {
		t.Fatalf("wrapped search: %+v", v.Open)
	}
	third := ap("203.0.113.2:40002")
	v = announce(t, e, w, third, 3000, "65000")
	if len(v.Open) != 0 || e.Stats.Refused[RefuseNoPort].Load() != 1 {
		t.Fatalf("every port held, yet opened %+v (refused %d)", v.Open, e.Stats.Refused[RefuseNoPort].Load())
	}
	// The refusal's longer reply shifts the server's later bytes.
	tc := &tconn{t: t}
	if _, p := tc.out(v, nil); p != "425 no port\n" {
		t.Errorf("refused announcement sent as %q", p)
	}
	c := e.Table.LookupVIP(third, vip)
	next := seg(c.Server, third, 3009, 101, pshAck, "ok\n")
	if seq, _ := tc.out(w.Process(next, 0), next); seq != 3009+4 {
		t.Errorf("next segment at %d, want %d", seq, 3009+4)
	}
}

// A copy of an announcing segment resent while the original waits in the
// datapath would reach the client, with its recorded edits, before the
// kernel has the channel: it is dropped until the original's verdict.
func TestResentAnnouncementWaits(t *testing.T) {
	e := portEngine(t, DefaultPolicy)
	w := e.NewWorker()
	v := announce(t, e, w, client, 1000, "40000")
	if len(v.Open) != 1 || v.Announcing == nil {
		t.Fatalf("announcement: %+v", v)
	}
	c := e.Table.LookupVIP(client, vip)
	resend := func() Verdict { return w.Process(seg(c.Server, client, 1001, 101, pshAck, "P 40000\n"), 0) }
	if r := resend(); !r.Drop {
		t.Errorf("copy released while the announcement waits: %+v", r)
	}
	// The client's packets and the server's later bytes go on meanwhile.
	if r := w.Process(seg(client, vip, 101, 1009, ack, ""), 0); r.Drop {
		t.Errorf("client's ACK dropped")
	}
	if r := w.Process(seg(c.Server, client, 1009, 101, pshAck, "X\n"), 0); r.Drop {
		t.Errorf("next segment dropped")
	}
	e.Announced(v.Announcing)
	if r := resend(); r.Drop || len(r.Open) != 0 {
		t.Errorf("copy after the verdict: %+v", r)
	}
}

// TestECMPTakesSameServerPort: behind ECMP, a claim of another connection
// leading to the same server and port is taken over (the earlier
// session's data connection crossed another router, whose word never
// comes here); one leading to another server still moves the port, and
// without ECMP so does the first.
func TestECMPTakesSameServerPort(t *testing.T) {
	for _, ecmp := range []bool{false, true} {
		e := portEngine(t, Policy{MaxChannels: 1, ChannelTimeout: time.Minute, ECMP: ecmp})
		w := e.NewWorker()
		hold := func(port int, server netip.AddrPort) {
			key := passiveKey{client.Addr(), netip.AddrPortFrom(vip.Addr(), uint16(port))}
			e.channels.passive[key] = passiveClaim{conn: &Conn{}, expires: now() + int64(time.Hour), server: server}
		}
		// Whichever server the connection gets, 40000 leads elsewhere
		// and 41000 to it.
		w.Process(seg(client, vip, 100, 0, syn, ""), 0)
		c := e.Table.LookupVIP(client, vip)
		elsewhere := ap("10.0.0.99:40000")
		hold(40000, elsewhere)
		hold(41000, netip.AddrPortFrom(c.Server.Addr(), 41000))
		w.Process(seg(c.Server, client, 1000, 101, syn|ack, ""), 0)
		v := w.Process(seg(c.Server, client, 1001, 101, pshAck, "P 40000\n"), 0)
		if len(v.Open) != 1 || v.Open[0].VIP.Port() == 40000 {
			t.Errorf("ecmp %v: another server's claim taken over: %+v", ecmp, v.Open)
		}
		v = w.Process(seg(c.Server, client, 1009, 101, pshAck, "P 41000\n"), 0)
		if len(v.Open) != 1 {
			t.Fatalf("ecmp %v: %+v", ecmp, v.Open)
		}
		key := passiveKey{client.Addr(), netip.AddrPortFrom(vip.Addr(), 41000)}
		if taken := v.Open[0].VIP.Port() == 41000; taken != ecmp || taken && e.channels.passive[key].conn != c {
			t.Errorf("ecmp %v: the same server and port announced as %d (claim %+v)", ecmp, v.Open[0].VIP.Port(), e.channels.passive[key])
		}
	}
}
