package topo

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Addresses and interfaces of the two-router topology (NewHA), those of
// docs/ha/keepalived.conf and docs/ha/conntrackd.conf:
//
//	client 192.0.2.10 ─┐ hub: bridge bup      bridge blan ┌─ rs1 10.0.0.11
//	                   ├─ eth0 r1 192.0.2.1  eth1 10.0.0.1 ─┤  rs2 10.0.0.12
//	                   └─ eth0 r2 192.0.2.2  eth1 10.0.0.2 ─┘  (default via 10.0.0.254)
//	r1 eth2 10.99.0.1 ── veth ── r2 eth2 10.99.0.2 (conntrackd's sync link)
//
// The service address HAVIP4 (on eth0) and the servers' gateway HALANVIP4
// (on eth1) are VRRP addresses: keepalived, started by the test, puts them
// on the master.
const (
	HAClientV4 = "192.0.2.10"
	HAVIP4     = "192.0.2.100"
	HALANVIP4  = "10.0.0.254"

	HAUpIf   = "eth0"
	HALANIf  = "eth1"
	HASyncIf = "eth2"
)

// HugeSize is huge.bin's size, served by both servers of NewHA: a transfer
// long enough to be in flight across a failover. 200 MiB; 48 MiB inside
// integration/vm, whose emulated guest moves a few MiB a second.
var HugeSize = hugeSize()

func hugeSize() int64 {
	if os.Getenv("NFHVM") != "" {
		return 48 << 20
	}
	return 200 << 20
}

// HARouter is one router of the pair.
type HARouter struct {
	Index  int // 1 or 2
	NS     string
	UpV4   string // on HAUpIf
	LANV4  string // on HALANIf
	SyncV4 string // on HASyncIf
	// Dir is the router's own working directory: its daemons' configs,
	// pid files, sockets and logs.
	Dir string
}

// Links are the router's interfaces.
func (r *HARouter) Links() []string { return []string{HAUpIf, HALANIf, HASyncIf} }

// HA is a two-router topology: a client and two real servers (vsftpd on
// both, IPv4 only) behind a pair of routers that share a hub namespace's two
// bridges. Topo.Router is router 1's namespace; the embedded Topo's Exec,
// Start, Run and Close work as for New's topology.
type HA struct {
	*Topo
	Hub     string
	Routers [2]*HARouter
}

// NewHA builds the two-router topology and starts vsftpd on both servers.
// Nothing runs on the routers: the test starts their daemons. On error
// everything already set up is torn down.
func NewHA(opts Options) (h *HA, err error) {
	ctx, cancel, logf, id, err := opts.begin()
	if err != nil {
		return nil, err
	}
	defer cancel()
	t := &Topo{
		ID:     id,
		Client: id + "-c",
		Router: id + "-r1",
		RS1:    id + "-s1",
		RS2:    id + "-s2",
		moreNS: []string{id + "-hub", id + "-r2"},
		Files:  map[string]string{},
		exited: map[*exec.Cmd]chan struct{}{},
		logf:   logf,
	}
	h = &HA{Topo: t, Hub: id + "-hub"}
	for i, ns := range []string{t.Router, id + "-r2"} {
		n := i + 1
		h.Routers[i] = &HARouter{
			Index:  n,
			NS:     ns,
			UpV4:   fmt.Sprintf("192.0.2.%d", n),
			LANV4:  fmt.Sprintf("10.0.0.%d", n),
			SyncV4: fmt.Sprintf("10.99.0.%d", n),
		}
	}
	defer func() {
		if err != nil {
			t.Close()
			h = nil
		}
	}()

	if err := t.makeDir(opts.Dir, "ha"); err != nil {
		return h, err
	}
	for _, r := range h.Routers {
		r.Dir = filepath.Join(t.Dir, fmt.Sprintf("r%d", r.Index))
		if err := os.MkdirAll(r.Dir, 0o755); err != nil {
			return h, err
		}
	}

	if err := t.startReaper(); err != nil {
		return h, fmt.Errorf("start reaper: %w", err)
	}
	if err := h.buildNetwork(ctx); err != nil {
		return h, err
	}
	if err := t.startServers(ctx, []*Server{
		{Name: "rs1", NS: t.RS1, V4: RS1V4},
		{Name: "rs2", NS: t.RS2, V4: RS2V4},
	}); err != nil {
		return h, err
	}
	if err := h.writeHuge(); err != nil {
		return h, err
	}
	logf("HA topology %s ready in %s", t.ID, t.Dir)
	return h, nil
}

func (h *HA) buildNetwork(ctx context.Context) error {
	t := h.Topo
	for _, ns := range t.Namespaces() {
		if err := run(ctx, "ip", "netns", "add", ns); err != nil {
			return err
		}
		t.mu.Lock()
		t.created = append(t.created, ns)
		t.mu.Unlock()
		if _, err := t.Run(ctx, ns, "sysctl", "-qw",
			"net.ipv4.conf.all.rp_filter=0",
			"net.ipv4.conf.default.rp_filter=0",
		); err != nil {
			return err
		}
		if err := ipn(ctx, ns, "link set lo up"); err != nil {
			return err
		}
	}
	type step struct{ ns, cmd string }
	hub := h.Hub
	steps := []step{
		{hub, "link add bup type bridge"},
		{hub, "link add blan type bridge"},
		{hub, "link set bup up"},
		{hub, "link set blan up"},
		{hub, "link add c type veth peer name eth0 netns " + t.Client},
		{hub, "link set c master bup up"},
		{t.Client, "addr add " + HAClientV4 + "/24 dev eth0"},
		{t.Client, "link set eth0 up"},
		{h.Routers[0].NS, "link add " + HASyncIf + " type veth peer name " + HASyncIf + " netns " + h.Routers[1].NS},
	}
	for _, r := range h.Routers {
		// No TCP pickup (docs/ha/conntrackd.conf): a packet of a connection
		// the new master has not committed yet is invalid, not the start of
		// a new, unbalanced one.
		if _, err := t.Run(ctx, r.NS, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.netfilter.nf_conntrack_tcp_loose=0"); err != nil {
			return err
		}
		up, lan := fmt.Sprintf("r%du", r.Index), fmt.Sprintf("r%dl", r.Index)
		steps = append(steps,
			step{hub, "link add " + up + " type veth peer name " + HAUpIf + " netns " + r.NS},
			step{hub, "link add " + lan + " type veth peer name " + HALANIf + " netns " + r.NS},
			step{hub, "link set " + up + " master bup up"},
			step{hub, "link set " + lan + " master blan up"},
			step{r.NS, "addr add " + r.UpV4 + "/24 dev " + HAUpIf},
			step{r.NS, "addr add " + r.LANV4 + "/24 dev " + HALANIf},
			step{r.NS, "addr add " + r.SyncV4 + "/24 dev " + HASyncIf},
		)
		for _, l := range r.Links() {
			steps = append(steps, step{r.NS, "link set " + l + " up"})
		}
	}
	for i, s := range []struct{ ns, v4 string }{{t.RS1, RS1V4}, {t.RS2, RS2V4}} {
		port := fmt.Sprintf("s%d", i+1)
		steps = append(steps,
			step{hub, "link add " + port + " type veth peer name eth0 netns " + s.ns},
			step{hub, "link set " + port + " master blan up"},
			step{s.ns, "addr add " + s.v4 + "/24 dev eth0"},
			step{s.ns, "link set eth0 up"},
			step{s.ns, "route add default via " + HALANVIP4},
		)
	}
	for _, s := range steps {
		if err := ipn(ctx, s.ns, s.cmd); err != nil {
			return err
		}
	}
	// A connection refused proves a path.
	for _, r := range h.Routers {
		if err := waitReachable(ctx, t.Client, net.JoinHostPort(r.UpV4, "9")); err != nil {
			return fmt.Errorf("client -> router %d: %w", r.Index, err)
		}
		for _, a := range []string{RS1V4, RS2V4, h.Routers[2-r.Index].SyncV4} {
			if err := waitReachable(ctx, r.NS, net.JoinHostPort(a, "9")); err != nil {
				return fmt.Errorf("router %d -> %s: %w", r.Index, a, err)
			}
		}
	}
	return nil
}

// writeHuge writes huge.bin (HugeSize random bytes) into both servers'
// roots, one file linked twice.
func (h *HA) writeHuge() error {
	p := filepath.Join(h.Servers[0].Root, "huge.bin")
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	hs := sha256.New()
	_, err = io.CopyN(io.MultiWriter(f, hs), rand.Reader, HugeSize)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	h.Files["huge.bin"] = hex.EncodeToString(hs.Sum(nil))
	return os.Link(p, filepath.Join(h.Servers[1].Root, "huge.bin"))
}

// StartDaemon starts nfhelperd (bin --config config) on router r, with a
// control socket and state directory in r.Dir, and waits until it is ready.
func (h *HA) StartDaemon(r *HARouter, bin, config string) (*Daemon, error) {
	return h.startDaemon(r.NS, bin, config, h.ControlSocketOf(r), filepath.Join(r.Dir, "nfhelper-state"))
}

// ControlSocketOf is the control socket of r's nfhelperd.
func (h *HA) ControlSocketOf(r *HARouter) string { return filepath.Join(r.Dir, "nfhelperd.sock") }

// SetLinks sets every link of r up or down: down cuts the router off
// (its VRRP adverts, its forwarding and conntrackd's sync stop).
func (h *HA) SetLinks(ctx context.Context, r *HARouter, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	for _, l := range r.Links() {
		if err := ipn(ctx, r.NS, "link set "+l+" "+state); err != nil {
			return err
		}
	}
	return nil
}

// HasAddress reports whether r holds address a (a VRRP address) on any
// interface.
func (h *HA) HasAddress(ctx context.Context, r *HARouter, a string) (bool, error) {
	out, err := h.Run(ctx, r.NS, "ip", "-4", "-o", "addr", "show")
	if err != nil {
		return false, err
	}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, a+"/") {
			return true, nil
		}
	}
	return false, nil
}
