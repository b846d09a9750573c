package kernel

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

func TestOffsetLabelsRoundTrip(t *testing.T) {
	for _, off := range [][2]int32{{0, 0}, {0, 3}, {-7, 12}, {1 << 30, -(1 << 30)}} {
		labels, mask := OffsetLabels(off)
		if got := OffsetsFromLabels(labels[:]); got != off {
			t.Errorf("OffsetsFromLabels(OffsetLabels(%v)) = %v", off, got)
		}
		if !bytes.Equal(mask[:offsetLabelsAt], make([]byte, offsetLabelsAt)) || !bytes.Equal(labels[:offsetLabelsAt], make([]byte, offsetLabelsAt)) {
			t.Errorf("offsets %v touch the user's label bits: labels %x mask %x", off, labels, mask)
		}
	}
	if got := OffsetsFromLabels([]byte{1, 2, 3, 4}); got != [2]int32{} {
		t.Errorf("short labels: %v, want none", got)
	}
}

// usesLabels installs a table with a rule that uses connection labels, so
// that new connections get the labels extension (as nft.Spec's labels
// chain does).
func usesLabels(t *testing.T) {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tab := c.AddTable(&nftables.Table{Name: "labels_test", Family: nftables.TableFamilyINet})
	ch := c.AddChain(&nftables.Chain{Name: "labels", Table: tab})
	c.AddRule(&nftables.Rule{Table: tab, Chain: ch, Exprs: []expr.Any{
		&expr.Immediate{Register: 1, Data: make([]byte, LabelsLen)},
		&expr.Ct{Key: expr.CtKeyLABELS, SourceRegister: true, Register: 1},
	}})
	if err := c.Flush(); err != nil {
		t.Fatalf("a rule using labels: %v", err)
	}
}

// TestSetOffsetLabels: the offsets reach the connection's labels without
// touching the user's bits, and the update event (what conntrackd carries)
// has them; a connection made while no rule used labels has none to set.
func TestSetOffsetLabels(t *testing.T) {
	c, events := ctWithUpdates(t)
	ctnl, err := DialCtnetlink()
	if err != nil {
		t.Fatal(err)
	}
	defer ctnl.Close()
	src, dst := netip.MustParseAddrPort("203.0.113.2:40000"), netip.MustParseAddrPort("198.51.100.10:21")
	orig := Tuple{Src: src, Dst: dst, Proto: unix.IPPROTO_TCP}
	create := func(sport uint16, user []byte) {
		t.Helper()
		f := conntrack.NewFlow(unix.IPPROTO_TCP, 0, src.Addr(), dst.Addr(), sport, dst.Port(), 60, 0)
		f.Labels = user
		if err := c.Create(f); err != nil {
			t.Fatalf("create a connection: %v", err)
		}
	}

	create(src.Port()-1, nil)
	early := Tuple{Src: netip.AddrPortFrom(src.Addr(), src.Port()-1), Dst: dst, Proto: unix.IPPROTO_TCP}
	if err := SetOffsetLabels(ctnl, early, [2]int32{0, 3}); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("labels of a connection made before any rule used them: %v, want ENOSPC", err)
	}

	usesLabels(t)
	user := make([]byte, LabelsLen)
	user[0], user[7] = 0x81, 0x40 // the user's own bits
	create(src.Port(), user)
	off := [2]int32{-2, 3}
	if err := SetOffsetLabels(ctnl, orig, off); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Flow.TupleOrig.Proto.SourcePort != src.Port() {
				continue
			}
			if got := OffsetsFromLabels(ev.Flow.Labels); got != off {
				t.Errorf("update event: offsets %v (labels %x), want %v", got, ev.Flow.Labels, off)
			}
			if len(ev.Flow.Labels) < offsetLabelsAt || !bytes.Equal(ev.Flow.Labels[:offsetLabelsAt], user[:offsetLabelsAt]) {
				t.Errorf("update event: labels %x, the user's bits %x lost", ev.Flow.Labels, user[:offsetLabelsAt])
			}
			got, err := c.Get(conntrack.NewFlow(unix.IPPROTO_TCP, 0, src.Addr(), dst.Addr(), src.Port(), dst.Port(), 0, 0))
			if err != nil {
				t.Fatal(err)
			}
			if OffsetsFromLabels(got.Labels) != off {
				t.Errorf("conntrack holds labels %x, want offsets %v", got.Labels, off)
			}
			return
		case <-timeout:
			t.Fatal("no update event after SetOffsetLabels")
		}
	}
}
