package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/kernel"
)

// Info is what the daemon tells about itself; it does not change while it runs.
type Info struct {
	Pid      int
	Started  time.Time
	Datapath string
	Queues   Queues
	// QueueExpr: how the table's rules queue (kernel.QueueNative or
	// kernel.QueueXt).
	QueueExpr string
	Config    string
	Table     string // the table's name, family inet
}

// Server answers the control API for a running engine.
type Server struct {
	Engine *ipvs.Engine
	Info   Info
	Log    *slog.Logger // the HTTP server's errors; nil: the standard logger

	// CheckFunc and RulesFunc replace the kernel probes (tests); nil: the
	// real ones (Probe, ListRules) run in the daemon's network namespace.
	CheckFunc func(ctx context.Context) []Check
	// Choose picks the datapath a restart would run, for the check.
	Choose    func(kernel.Features) (string, error)
	RulesFunc func(ctx context.Context) (Rules, error)
	// Servers is runtime control of real servers and their standing (nil:
	// none; POST PathServer answers 503).
	Servers ServerControl
	// VRRPStateFile names the VRRP state file status reads, and whether
	// the configuration set it (config.Config.VRRPStateFile); nil: status
	// tells nothing of VRRP.
	VRRPStateFile func() (path string, configured bool)
	// Kernel reads kernel-scheduled services' connections and templates
	// (nil: the engine's counts are shown).
	Kernel KernelSource

	mu           sync.Mutex
	reloads      int
	lastReload   *Reload
	conntrackErr error

	ln   *net.UnixListener
	path string
	fi   os.FileInfo // the socket file we created
	hs   *http.Server
}

// NoteReload records the outcome of a reload (err nil: applied).
func (s *Server) NoteReload(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &Reload{Time: time.Now()}
	if err != nil {
		r.Error = err.Error()
	} else {
		s.reloads++
	}
	s.lastReload = r
}

// NoteConntrack records that the daemon's conntrack event listener failed.
func (s *Server) NoteConntrack(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conntrackErr = err
}

// ErrInUse reports a socket path another live process answers on.
var ErrInUse = errors.New("control socket in use")

// Listen creates the unix socket at path, mode 0600 (root only), its
// directory 0755 if missing. A stale socket (nobody answers) is removed
// first; a live one, or a file that is no socket, is left alone.
func (s *Server) Listen(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return fmt.Errorf("control socket: %s exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return fmt.Errorf("%w: another process listens on %s", ErrInUse, path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("control socket: remove stale %s: %w", path, err)
		}
	}
	// The socket is created 0600 from the start: no moment where others
	// could connect. The daemon creates no other files meanwhile.
	old := syscall.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("control socket: %w", err)
	}
	// Removed by Close only while it is still ours.
	ln.SetUnlinkOnClose(false)
	fi, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return fmt.Errorf("control socket: %w", err)
	}
	s.ln, s.path, s.fi = ln, path, fi
	return nil
}

// Path is the socket path Listen created.
func (s *Server) Path() string { return s.path }

// Serve answers requests until ctx ends, then removes the socket.
func (s *Server) Serve(ctx context.Context) error {
	if s.ln == nil {
		return errors.New("control socket: Listen first")
	}
	s.hs = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       30 * time.Second,
	}
	if s.Log != nil {
		s.hs.ErrorLog = slog.NewLogLogger(s.Log.Handler(), slog.LevelWarn)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.hs.Shutdown(sctx)
	}()
	err := s.hs.Serve(s.ln)
	<-done
	s.removeSocket()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// removeSocket deletes the socket file unless it was replaced meanwhile.
func (s *Server) removeSocket() {
	if fi, err := os.Lstat(s.path); err == nil && os.SameFile(fi, s.fi) {
		os.Remove(s.path)
	}
}

// Handler is the API (see the package comment).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+PathStatus, func(w http.ResponseWriter, r *http.Request) { reply(w, s.Status(), nil) })
	mux.HandleFunc("GET "+PathServices, func(w http.ResponseWriter, r *http.Request) { reply(w, s.Services(r.Context()), nil) })
	mux.HandleFunc("GET "+PathConns, s.handleConns)
	mux.HandleFunc("GET "+PathCheck, func(w http.ResponseWriter, r *http.Request) { reply(w, s.Check(r.Context()), nil) })
	mux.HandleFunc("GET "+PathRules, func(w http.ResponseWriter, r *http.Request) {
		rules, err := s.Rules(r.Context())
		reply(w, rules, err)
	})
	mux.HandleFunc("POST "+PathServer, s.handleServer)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		reply(w, nil, &httpError{http.StatusNotFound, fmt.Sprintf("no such request: %s %s", r.Method, r.URL.Path)})
	})
	return mux
}

type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		code := http.StatusInternalServerError
		var he *httpError
		if errors.As(err, &he) {
			code = he.code
		}
		e := errorReply{Error: err.Error()}
		for _, k := range errorKinds {
			if errors.Is(err, k.err) {
				code, e.Kind = k.code, k.kind
				break
			}
		}
		w.WriteHeader(code)
		v = e
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Status is the /v1/status reply.
func (s *Server) Status() Status {
	e := s.Engine
	st := Status{
		Pid: s.Info.Pid, Started: s.Info.Started, Datapath: s.Info.Datapath, Queues: s.Info.Queues,
		Config: s.Info.Config, Table: "inet " + s.Info.Table,
		UptimeSeconds: int64(time.Since(s.Info.Started).Seconds()),
		TCP:           e.Table.Len(), UDP: e.UDP.Len(),
		Stats: StatsMap(&e.Stats), HelperStats: helperStatsMap(e),
	}
	st.Connections = st.TCP + st.UDP
	for _, svc := range e.Services() {
		if svc.AddOn {
			st.Helpers++
		} else {
			st.Services++
		}
	}
	if s.VRRPStateFile != nil {
		st.VRRP = readVRRP(s.VRRPStateFile())
	}
	s.mu.Lock()
	st.Reloads = s.reloads
	if s.lastReload != nil {
		r := *s.lastReload
		st.LastReload = &r
	}
	s.mu.Unlock()
	return st
}

// StatNames are the engine's counters in the order status prints them: the
// registry's (ipvs.Counters), whose names the daemon's log lines use too.
var StatNames = func() []string {
	var names []string
	for _, c := range ipvs.Counters() {
		names = append(names, c.Name)
	}
	return names
}()

// StatsMap is the engine's counters by the names of StatNames.
func StatsMap(s *ipvs.Stats) map[string]uint64 {
	cs := ipvs.Counters()
	m := make(map[string]uint64, len(cs))
	for i := range cs {
		m[cs[i].Name] = cs[i].Load(s)
	}
	return m
}

// helperStatsMap is every helper's counters (registered ones at zero too)
// by helper name, then by the names of ipvs.HelperCounters.
func helperStatsMap(e *ipvs.Engine) map[string]map[string]uint64 {
	cs := ipvs.HelperCounters()
	out := map[string]map[string]uint64{}
	for _, h := range e.HelperStats() {
		m := make(map[string]uint64, len(cs))
		for i := range cs {
			m[cs[i].Name] = cs[i].Load(h.Stats)
		}
		out[h.Helper] = m
	}
	return out
}

// Services is the /v1/services reply. Kernel-scheduled services' counts
// and templates are read from the kernel now.
func (s *Server) Services(ctx context.Context) Services {
	views := s.Engine.ServiceViews()
	k := s.readKernel(ctx, views, true)
	out := Services{Services: []Service{}, Helpers: []Service{}, KernelError: k.errText()}
	for i := range views {
		v := &views[i]
		svc := serviceOf(v)
		for _, rs := range v.Servers {
			r := RealServer{Address: rs.Addr, Weight: rs.Weight, Active: rs.Active, Inactive: rs.Inactive,
				Conns: rs.Conns, Packets: rs.Packets, Bytes: rs.Bytes, Down: rs.Down, Sorry: rs.Sorry}
			if !v.AddOn {
				s.standing(&r, v.Name)
			}
			svc.Servers = append(svc.Servers, r)
		}
		k.apply(&svc, v)
		if v.AddOn {
			out.Helpers = append(out.Helpers, svc)
		} else {
			out.Services = append(out.Services, svc)
		}
	}
	return out
}

// serviceOf is v's settings, without its servers.
func serviceOf(v *ipvs.ServiceView) Service {
	svc := Service{Name: v.Name, Protocol: "TCP", Scheduler: v.Scheduler, ScheduledBy: scheduledBy(v), Helper: v.Helper, Servers: []RealServer{}}
	if v.UDP {
		svc.Protocol = "UDP"
	}
	if v.AddOn {
		svc.Match = v.VIP
	} else {
		svc.VIP = v.VIP
	}
	if v.Persistent {
		svc.Persistence = &Persistence{TimeoutSeconds: int64(v.PersistTimeout / time.Second),
			Prefix4: v.PersistV4, Prefix6: v.PersistV6, Templates: v.Templates}
	}
	if v.Helper != "" {
		svc.Policy = &Policy{Loose: v.Policy.Loose, AllowLowPorts: v.Policy.AllowLowPorts,
			MaxDataChannels: v.Policy.MaxChannels, DataChannelTimeoutSeconds: int64(v.Policy.ChannelTimeout / time.Second)}
	}
	return svc
}

// Conns is the /v1/conns reply, ordered by protocol, VIP, client.
func (s *Server) Conns(ctx context.Context) Conns {
	return s.conns(ctx, func(*Conn) bool { return true })
}

// conns is the /v1/conns reply of the connections keep says yes to: the
// engine's table, and kernel-scheduled services' connections read from
// the kernel now.
func (s *Server) conns(ctx context.Context, keep func(*Conn) bool) Conns {
	views, services := s.Engine.ConnViews(), s.Engine.ServiceViews()
	k := s.readKernel(ctx, services, false)
	out := Conns{Conns: make([]Conn, 0, len(views)), KernelError: k.errText()}
	inTable := make(map[connKey]bool, len(views))
	for i := range views {
		v := &views[i]
		inTable[connKey{v.UDP, v.Client, v.VIP}] = true
		if c := connOf(v); keep(&c) {
			out.Conns = append(out.Conns, c)
		}
	}
	for _, c := range k.conns(services, inTable) {
		if keep(&c) {
			out.Conns = append(out.Conns, c)
		}
	}
	slices.SortFunc(out.Conns, func(a, b Conn) int {
		if a.Protocol != b.Protocol {
			if a.Protocol < b.Protocol {
				return -1
			}
			return 1
		}
		if n := a.VIP.Compare(b.VIP); n != 0 {
			return n
		}
		return a.Client.Compare(b.Client)
	})
	return out
}

// connOf is an engine table entry as a reply shows it.
func connOf(v *ipvs.ConnView) Conn {
	c := Conn{Protocol: "TCP", State: v.State.String(), ExpiresIn: int64(v.ExpiresIn / time.Second),
		Client: v.Client, VIP: v.VIP, Server: v.Server, ClientNAT: v.ClientNAT, Service: v.Service, Helper: v.Helper, About: v.About}
	if v.UDP {
		c.Protocol = "UDP"
	}
	for _, r := range v.Replies {
		c.Replies = append(c.Replies, Reply{Server: r.Server, VIP: r.VIP, AgeSeconds: int64(r.Age / time.Second)})
	}
	for _, ch := range v.Channels {
		c.Channels = append(c.Channels, Channel{Kind: ch.Kind.String(), Client: ch.Client, VIP: ch.VIP,
			Server: ch.Server, NAT: ch.NAT, ExpiresIn: int64(ch.ExpiresIn / time.Second)})
	}
	return c
}

// Check is the /v1/check reply.
func (s *Server) Check(ctx context.Context) CheckReport {
	if s.CheckFunc != nil {
		return CheckReport{Checks: s.CheckFunc(ctx)}
	}
	s.mu.Lock()
	ctErr := s.conntrackErr
	s.mu.Unlock()
	return CheckReport{Checks: Probe(ctx, ProbeInput{
		Table: s.Info.Table, Datapath: s.Info.Datapath, Queues: s.Info.Queues, QueueExpr: s.Info.QueueExpr,
		Packets: s.Engine.Stats.Packets.Load(), Services: s.Engine.ServiceViews(), ConntrackErr: ctErr, Choose: s.Choose,
	})}
}

// Rules is the /v1/rules reply.
func (s *Server) Rules(ctx context.Context) (Rules, error) {
	if s.RulesFunc != nil {
		return s.RulesFunc(ctx)
	}
	return ListRules(ctx, s.Info.Table)
}
