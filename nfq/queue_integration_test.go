//go:build integration

package nfq_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"

	"github.com/nfhelper/nfhelper/internal/netnstest"
	"github.com/nfhelper/nfhelper/nfq"
)

const (
	itPort  = 9999
	itQueue = 5
	itMark  = 0x42
)

// inNetns runs f on a thread switched into the namespace at path; sockets
// f creates stay there.
func inNetns(t *testing.T, path string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			panic(err) // the thread must not go back to the pool in the wrong namespace
		}
	}()
	f()
}

// itRules queues UDP to itPort from the output hook (xtables NFQUEUE, as
// nfhelperd does) and counts, in the input hook, packets with itMark.
func itRules(t *testing.T, nsPath string) (*nftables.Conn, func() uint64) {
	t.Helper()
	f, err := os.Open(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())), nftables.AsLasting())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseLasting() })
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "nfqit"})
	pol := nftables.ChainPolicyAccept
	out := c.AddChain(&nftables.Chain{Name: "out", Table: tbl, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &pol})
	in := c.AddChain(&nftables.Chain{Name: "in", Table: tbl, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &pol})
	port := binary.BigEndian.AppendUint16(nil, itPort)
	match := func() []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
		}
	}
	info := make(xt.Unknown, 6)
	binary.NativeEndian.PutUint16(info[0:], itQueue)
	binary.NativeEndian.PutUint16(info[2:], 1)
	c.AddRule(&nftables.Rule{Table: tbl, Chain: out, Exprs: append(match(), &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &info})})
	c.AddRule(&nftables.Rule{Table: tbl, Chain: in, Exprs: append(match(),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, itMark)},
		&expr.Counter{})})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	return c, func() uint64 {
		rules, err := c.GetRules(tbl, in)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				if ctr, ok := e.(*expr.Counter); ok {
					return ctr.Packets
				}
			}
		}
		t.Fatal("no counter")
		return 0
	}
}

// TestQueueRealPackets: packets queued by the kernel come back accepted
// with a mark, with an altered payload, dropped, or accepted later from
// another goroutine.
func TestQueueRealPackets(t *testing.T) {
	ns := netnstest.Path(netnstest.New(t, "nfqit"))
	_, marked := itRules(t, ns)
	var q *nfq.Queue
	var rx, tx net.PacketConn
	inNetns(t, ns, func() {
		var err error
		if q, err = nfq.Open(nfq.Config{Num: itQueue, MaxLen: 64}); err != nil {
			t.Fatal(err)
		}
		if rx, err = net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", itPort)); err != nil {
			t.Fatal(err)
		}
		if tx, err = net.ListenPacket("udp4", "127.0.0.2:0"); err != nil {
			t.Fatal(err)
		}
		// A second socket cannot take the queue.
		_, err = nfq.Open(nfq.Config{Num: itQueue})
		if !errors.Is(err, nfq.ErrQueueHeld) || !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "held by another process") {
			t.Errorf("second bind: %v", err)
		}
		// The conntrack flag: there on stock kernels, refused here.
		ct, err := nfq.Open(nfq.Config{Num: itQueue + 1, Flags: nfq.FlagConntrack | nfq.FlagFailOpen})
		switch {
		case err == nil:
			t.Log("kernel attaches conntrack to queued packets")
			ct.Close()
		case errors.Is(err, nfq.ErrConntrackUnsupported) && errors.Is(err, nfq.ErrFlagUnsupported) && errors.Is(err, unix.EOPNOTSUPP):
			t.Logf("conntrack flag refused as expected here: %v", err)
		default:
			t.Errorf("conntrack flag: %v", err)
		}
		gso, err := nfq.Open(nfq.Config{Num: itQueue + 2, Flags: nfq.FlagGSO})
		if err != nil {
			t.Errorf("GSO flag: %v", err)
		} else {
			gso.Close()
		}
	})
	defer q.Close()
	defer rx.Close()
	defer tx.Close()

	held := make(chan uint32, 1)
	hooks := make(chan uint8, 8)
	done, err := q.Run(context.Background(), func(m *nfq.Message) {
		select {
		case hooks <- m.Hook:
		default:
		}
		pkt := m.Payload
		ihl := int(pkt[0]&0xf) * 4
		data := string(pkt[ihl+8:])
		switch data {
		case "mark":
			q.Accept(m.ID, true, itMark, nil)
		case "rewrite":
			alt := append([]byte(nil), pkt...)
			copy(alt[ihl+8:], "REWRITE")
			alt[ihl+6], alt[ihl+7] = 0, 0 // no UDP checksum
			q.SetVerdict(&nfq.Verdict{ID: m.ID, Verdict: nfq.VerdictAccept, Payload: alt})
		case "drop":
			q.Drop(m.ID)
		case "held":
			held <- m.ID
		default:
			q.Accept(m.ID, false, 0, nil)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: itPort}
	recv := func() string {
		rx.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 100)
		n, _, err := rx.ReadFrom(buf)
		if err != nil {
			return err.Error()
		}
		return string(buf[:n])
	}
	for _, s := range []string{"plain", "mark", "rewrite", "drop", "held"} {
		if _, err := tx.WriteTo([]byte(s), dst); err != nil && s != "drop" {
			t.Fatal(err)
		}
	}
	id := <-held
	for _, want := range []string{"plain", "mark", "REWRITE"} {
		if got := recv(); got != want {
			t.Errorf("received %q, want %q", got, want)
		}
	}
	go q.Accept(id, false, 0, nil) // from another goroutine, while the reader waits
	if got := recv(); got != "held" {
		t.Errorf("received %q, want the held packet", got)
	}
	if n := marked(); n != 1 {
		t.Errorf("%d packets with the mark reached input, want 1", n)
	}
	if h := <-hooks; h != unix.NF_INET_LOCAL_OUT {
		t.Errorf("hook %d", h)
	}
	// A burst larger than one receive batch, all answered.
	for i := range 200 {
		tx.WriteTo([]byte(fmt.Sprint("burst", i)), dst)
		if i%40 == 39 {
			for range 40 {
				if got := recv(); !strings.HasPrefix(got, "burst") {
					t.Fatalf("burst: %q", got)
				}
			}
		}
	}
	if q.VerdictErrors.Load() != 0 || q.Malformed.Load() != 0 {
		t.Errorf("verdict errors %d, malformed %d", q.VerdictErrors.Load(), q.Malformed.Load())
	}
	q.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("reader after Close: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Error("Close did not stop the reader")
	}
}

// TestQueueConntrack: with the conntrack flag (stock kernels only; skipped
// where the kernel refuses it), a queued packet carries its connection
// (NFQA_CT, NFQA_CT_INFO), and a verdict carrying NFQA_CT changes it: here
// the connection mark (CTA_MARK), seen by a later rule.
func TestQueueConntrack(t *testing.T) {
	ns := netnstest.Path(netnstest.New(t, "nfqit"))
	c, _ := itRules(t, ns)
	tbl := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: "nfqit"}
	pol := nftables.ChainPolicyAccept
	in2 := c.AddChain(&nftables.Chain{Name: "in_ct", Table: tbl, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &pol})
	c.AddRule(&nftables.Rule{Table: tbl, Chain: in2, Exprs: []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, 0x77)},
		&expr.Counter{},
	}})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	var q *nfq.Queue
	inNetns(t, ns, func() {
		var err error
		q, err = nfq.Open(nfq.Config{Num: itQueue, Flags: nfq.FlagConntrack})
		if errors.Is(err, nfq.ErrConntrackUnsupported) {
			t.Skipf("this kernel: %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
	})
	defer q.Close()
	rx, tx := udpPair(t, ns)
	type seen struct {
		ct     []byte
		info   uint32
		hasCT  bool
		hasInf bool
	}
	got := make(chan seen, 4)
	// CTA_MARK (8), big-endian 0x77.
	ctMark := []byte{8, 0, 8, 0, 0, 0, 0, 0x77}
	_, err := q.Run(context.Background(), func(m *nfq.Message) {
		got <- seen{append([]byte(nil), m.CT...), m.CTInfo, m.CT != nil, m.HasCTInfo}
		q.SetVerdict(&nfq.Verdict{ID: m.ID, Verdict: nfq.VerdictAccept, CT: ctMark})
	})
	if err != nil {
		t.Fatal(err)
	}
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: itPort}
	tx.WriteTo([]byte("one"), dst)
	s := <-got
	if !s.hasCT || !s.hasInf || s.info != 2 { // IP_CT_NEW
		t.Errorf("conntrack of a new flow: CT %x, info %d (present %v)", s.ct, s.info, s.hasInf)
	}
	rx.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 16)
	if n, _, err := rx.ReadFrom(buf); err != nil || string(buf[:n]) != "one" {
		t.Fatalf("received %q, %v", buf[:n], err)
	}
	rules, err := c.GetRules(tbl, in2)
	if err != nil {
		t.Fatal(err)
	}
	var marked uint64
	for _, r := range rules {
		for _, e := range r.Exprs {
			if ctr, ok := e.(*expr.Counter); ok {
				marked = ctr.Packets
			}
		}
	}
	if marked != 1 {
		t.Errorf("%d packets reached input with ct mark 0x77, want 1 (the verdict's NFQA_CT)", marked)
	}
	t.Logf("NFQA_CT of the first packet: %x", s.ct)
}

// TestQueueInheritAdopt: a queue handed over (as across exec) goes on in
// its successor: a packet queued while nobody reads is read by the adopted
// queue, whose verdict (a mark) reaches the kernel.
func TestQueueInheritAdopt(t *testing.T) {
	ns := netnstest.Path(netnstest.New(t, "nfqit"))
	_, marked := itRules(t, ns)
	var q *nfq.Queue
	inNetns(t, ns, func() {
		var err error
		if q, err = nfq.Open(nfq.Config{Num: itQueue, MaxLen: 64, Flags: nfq.FlagFailOpen}); err != nil {
			t.Fatal(err)
		}
	})
	rx, tx := udpPair(t, ns)
	f, err := q.Inherit()
	if err != nil {
		t.Fatal(err)
	}
	q.Close() // the predecessor is gone; the inherited copy keeps the binding
	if _, err := tx.WriteTo([]byte("handed over"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: itPort}); err != nil {
		t.Fatal(err)
	}
	// Adopt owns the descriptor it is given, as a successor after exec
	// does: f must not close it again (its finalizer would, later, close
	// whatever a later test opened under that number).
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	next, err := nfq.Adopt(fd, nfq.Config{Num: itQueue})
	if err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	defer next.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := next.Start(ctx, func(id uint32, pkt []byte, mark uint32) { next.Accept(id, true, itMark, nil) }); err != nil {
		t.Fatal(err)
	}
	rx.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, _, err := rx.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "handed over" {
		t.Fatalf("packet queued across the hand-over: %q %v", buf[:n], err)
	}
	if got := marked(); got != 1 {
		t.Errorf("%d packets carried the successor's mark, want 1", got)
	}
	if _, err := nfq.Adopt(int(os.Stdin.Fd()), nfq.Config{Num: itQueue}); err == nil {
		t.Error("adopted a file that is no netlink socket")
	}
}

// udpPair opens, in the namespace at ns, the receiver on itPort and a
// sender; both close with the test.
func udpPair(t *testing.T, ns string) (rx, tx net.PacketConn) {
	t.Helper()
	inNetns(t, ns, func() {
		var err error
		if rx, err = net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", itPort)); err != nil {
			t.Fatal(err)
		}
		if tx, err = net.ListenPacket("udp4", "127.0.0.2:0"); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { rx.Close(); tx.Close() })
	return rx, tx
}
