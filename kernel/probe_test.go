package kernel

import (
	"errors"
	"os"
	"runtime"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// inNewNetns runs the test on a thread in a network namespace of its own
// (root only): the probes and registrations touch nothing of the host's.
func inNewNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	runtime.LockOSThread() // never unlocked: the thread dies with the test goroutine
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("unshare: %v", err)
	}
}

func TestProbeKernel(t *testing.T) {
	inNewNetns(t)
	conn, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	f := Probe(conn)
	for _, ft := range f.List() {
		t.Logf("%-16s %v", ft.Name, ft.Err)
	}
	for _, c := range []struct {
		err, want error
	}{{f.NativeQueue, ErrNoNativeQueue}, {f.XtQueue, ErrNoXtQueue}, {f.QueueConntrack, ErrNoQueueConntrack}, {f.Cthelper, ErrNoCthelper}, {f.Ctnetlink, ErrNoCtnetlink}, {f.IPVS, ErrNoIPVS}, {f.KernelFTP, ErrNoKernelFTP}, {f.KernelTFTP, ErrNoKernelTFTP}} {
		if c.err != nil && !errors.Is(c.err, c.want) && !errors.Is(c.err, ErrProbeSkipped) {
			t.Errorf("%v: not a %v", c.err, c.want)
		}
	}
	// Nothing left behind.
	tables, _ := conn.ListTables()
	for _, tb := range tables {
		if tb.Name == ProbeTable {
			t.Errorf("probe table left")
		}
	}
	data, _ := os.ReadFile("/proc/net/netfilter/nfnetlink_queue")
	if len(data) > 0 {
		t.Errorf("a queue stays bound: %s", data)
	}
	dp, err := Choose(f, "", true)
	t.Logf("datapath %s (%v), queue expression %s", dp, err, f.QueueExpr())
}

func TestCthelperRegister(t *testing.T) {
	inNewNetns(t)
	if err := ProbeCthelper(); errors.Is(err, ErrNoCthelper) {
		t.Skip(err)
	} else if err != nil {
		t.Fatal(err)
	}
	ch, err := DialCthelper()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	h := ftpHelper()
	h.Name = "nfhelper-test"
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		h.Family = fam
		if old, err := ch.Register(h); err != nil || old != nil {
			t.Fatalf("adopted %+v (%v), want a new registration", old, err)
		}
		// Again, with another queue: a stale registration is updated.
		h.Queue = 300
		if old, err := ch.Register(h); err != nil || old == nil || old.Queue != 200 {
			t.Fatalf("again: adopted %+v (%v), want the registration with queue 200", old, err)
		}
		h.Queue = 200
		if _, err := ch.Register(h); err != nil {
			t.Fatalf("back: %v", err)
		}
		// Another data length: replaced.
		h.PrivLen = 8
		if _, err := ch.Register(h); err != nil {
			t.Fatalf("other length: %v", err)
		}
		h.PrivLen = StateLen
		if _, err := ch.Register(h); err != nil {
			t.Fatalf("length back: %v", err)
		}
	}
	list, err := ch.List()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, got := range list {
		if got.Name == h.Name {
			n++
			if got.Queue != h.Queue || got.PrivLen != h.PrivLen || !got.Enabled || len(got.Policies) != 1 || got.Policies[0] != h.Policies[0] {
				t.Errorf("registered %+v", got)
			}
		}
	}
	if n != 2 {
		t.Errorf("%d registrations of %s, want 2: %+v", n, h.Name, list)
	}
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		if err := ch.Unregister(h.Name, fam, unix.IPPROTO_TCP); err != nil {
			t.Error(err)
		}
	}
	// Gone: ENOENT, or nil when no userspace helper is left at all.
	if err := ch.Unregister(h.Name, unix.AF_INET, unix.IPPROTO_TCP); err != nil && !errors.Is(err, unix.ENOENT) {
		t.Errorf("unregister twice: %v", err)
	}
}
