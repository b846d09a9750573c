package ipvs

import (
	"net/netip"
	"testing"
)

// TestUDPAddOnRequests: a UDP add-on's request, queued after the user's
// DNAT with the add-on's mark, is taken as a request to that server: the
// verdict clears the mark bits and sets ReplyMark; the server's answer
// behind the user's SNAT (seen: the router's address) starts under it and
// ends by its original direction.
func TestUDPAddOnRequests(t *testing.T) {
	const markMask, replyMark, addOnMark = 0x00ff0000, 0x08000000, 0x00400000
	match := ap("203.0.113.1:69")
	s := NewAddOn("gw-tftp", match, nil, addOnMark)
	s.UDP, s.Datagram = true, requestHelper{}
	e, err := NewEngine([]*Service{s}, Options{MarkMask: markMask, ReplyMark: replyMark})
	if err != nil {
		t.Fatal(err)
	}
	w := e.NewWorker()
	cl, server := ap("192.0.2.7:40000"), ap("10.0.0.11:69")
	send := func(src, dst netip.AddrPort, payload string, mark uint32) Verdict {
		p := udpPacket(src, dst)
		p[3] += byte(len(payload))
		p[25] += byte(len(payload))
		return w.Process(append(p, payload...), mark)
	}
	mark := e.Services()[0].Mark
	for i := range 2 {
		v := send(cl, server, "REQ file", 0x1|mark)
		if !v.SetMark || v.Mark != 0x1|replyMark || v.Drop {
			t.Errorf("request %d: %+v, want mark bits cleared (user's bit kept) and ReplyMark", i, v)
		}
	}
	if n := e.Stats.Adopted.Load(); n != 1 {
		t.Errorf("adopted %d, want 1 (a copy is the same flow)", n)
	}
	views := e.ConnViews()
	if len(views) != 1 || views[0].VIP != match || views[0].Server != server || views[0].About != "REQ file" {
		t.Fatalf("views %+v", views)
	}
	seen := ap("10.0.0.1:61000") // the user's SNAT of the client
	if !e.ReplyStarted(ap("10.0.0.11:50000"), seen, cl, ap("203.0.113.1:50000")) {
		t.Fatal("the server's answer was not taken")
	}
	if v := e.ConnViews(); len(v) != 1 || len(v[0].Replies) != 1 {
		t.Fatalf("views %+v", v)
	}
	// conntrack's destroy event names the answer by its original direction.
	e.ConntrackDestroyed(true, ap("10.0.0.11:50000"), seen, 10, 1000)
	if v := e.ConnViews(); len(v) != 1 || len(v[0].Replies) != 0 {
		t.Errorf("after the answer ended: %+v", v)
	}
	// The user's rules move the client's flow to another server: a new
	// request flow.
	if v := send(cl, ap("10.0.0.12:69"), "REQ file", mark); v.Mark != replyMark {
		t.Errorf("moved request: %+v", v)
	}
	if v := e.ConnViews(); len(v) != 1 || v[0].Server != ap("10.0.0.12:69") {
		t.Errorf("after the move: %+v", v)
	}
}

// TestForeignReply: a flow queued with ReplyMark (nft found it addressed
// to a client port awaiting an answer, from no request's server) is
// counted as refused_foreign_reply and passes with ReplyMark cleared, or
// is dropped with block_refused.
func TestForeignReply(t *testing.T) {
	const replyMark = 0x08000000
	a := &RealServer{Addr: ap("10.0.0.11:69"), Weight: 1}
	s := svcOf(t, "198.51.100.10:69", "rr", a)
	s.UDP, s.Datagram = true, requestHelper{}
	e, err := NewEngine([]*Service{s}, Options{MarkMask: 0x00ff0000, ReplyMark: replyMark})
	if err != nil {
		t.Fatal(err)
	}
	w := e.NewWorker()
	cl := ap("203.0.113.2:40000")
	p := udpPacket(cl, ap("198.51.100.10:69"))
	p[3] += 3
	p[25] += 3
	w.Process(append(p, "REQ"...), 0)
	v := w.Process(udpPacket(ap("10.0.0.99:5000"), cl), replyMark|0x1)
	if !v.SetMark || v.Mark != 0x1 || v.Drop {
		t.Errorf("foreign reply: %+v, want passed with ReplyMark cleared", v)
	}
	if n := e.Stats.Refused[RefuseForeignReply].Load(); n != 1 {
		t.Errorf("refused_foreign_reply %d, want 1", n)
	}
	// To a port no request of this daemon's waits on (the user's SNAT of
	// the client): counted all the same.
	w.Process(udpPacket(ap("10.0.0.99:5000"), ap("10.0.0.1:7000")), replyMark)
	if n := e.Stats.Refused[RefuseForeignReply].Load(); n != 2 {
		t.Errorf("refused_foreign_reply %d, want 2", n)
	}

	s2 := svcOf(t, "198.51.100.10:69", "rr", &RealServer{Addr: ap("10.0.0.11:69"), Weight: 1})
	s2.UDP, s2.Datagram = true, requestHelper{}
	s2.Policy.BlockRefused = true
	e2, err := NewEngine([]*Service{s2}, Options{MarkMask: 0x00ff0000, ReplyMark: replyMark})
	if err != nil {
		t.Fatal(err)
	}
	w2 := e2.NewWorker()
	w2.Process(append(p, "REQ"...), 0)
	if v := w2.Process(udpPacket(ap("10.0.0.99:5000"), cl), replyMark); !v.Drop {
		t.Errorf("foreign reply with block_refused: %+v, want dropped", v)
	}
}
