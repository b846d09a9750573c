package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"time"

	"github.com/nfhelper/nfhelper/ipvs"
)

// PathServer changes a real server's standing at run time: POST a
// ServerRequest, the reply is the RealServer after the change.
const PathServer = "/v1/server"

// Errors of SetServer; the API answers them 404, 404 and 400, and the
// client gives them back wrapped.
var (
	ErrUnknownService = errors.New("unknown service")
	ErrUnknownServer  = errors.New("unknown real server")
	ErrBadRequest     = errors.New("bad request")
)

// ServerRequest operations.
const (
	OpWeight  = "weight"  // weight Weight, until cleared by a change of the server's entry in the file
	OpDrain   = "drain"   // weight 0: no new connections, running ones go on
	OpUndrain = "undrain" // back to its weight
	OpDown    = "down"    // out, whatever its checks say
	OpUp      = "up"      // back to its checks
)

// ServerRequest is one runtime change of a real server of a service.
type ServerRequest struct {
	Service string         `json:"service"`
	Address netip.AddrPort `json:"address"`
	Op      string         `json:"op"`
	Weight  int            `json:"weight,omitempty"`
}

// MaxWeight is the largest weight a real server can have.
const MaxWeight = 65535

// Validate reports a request that no daemon could apply.
func (r ServerRequest) Validate() error {
	switch {
	case r.Service == "":
		return fmt.Errorf("%w: no service", ErrBadRequest)
	case !r.Address.IsValid():
		return fmt.Errorf("%w: no address:port", ErrBadRequest)
	case r.Address.Port() == 0:
		return fmt.Errorf("%w: %s: port 0", ErrBadRequest, r.Address)
	}
	switch r.Op {
	case OpWeight:
		if r.Weight < 0 || r.Weight > MaxWeight {
			return fmt.Errorf("%w: weight %d out of 0..%d", ErrBadRequest, r.Weight, MaxWeight)
		}
	case OpDrain, OpUndrain, OpDown, OpUp:
		if r.Weight != 0 {
			return fmt.Errorf("%w: %s takes no weight", ErrBadRequest, r.Op)
		}
	default:
		return fmt.Errorf("%w: unknown operation %q (have weight, drain, undrain, down, up)", ErrBadRequest, r.Op)
	}
	return nil
}

// Override is what nfhelperctl server set for a real server: it holds over
// the file's weight and the checks until undone, or until a reload changes
// the server's entry in the file.
type Override struct {
	Weight  *int `json:"weight,omitempty"`
	Drained bool `json:"drained,omitempty"`
	Down    bool `json:"down,omitempty"`
}

// Standing is a configured real server's health and overrides.
type Standing struct {
	Check        string // check type; "none": always up
	Health       string // "up" or "down", as its checks say
	Since        time.Time
	LastFailure  time.Time
	LastCause    string
	ConfigWeight int // the file's weight
	Override     *Override
}

// ServerControl is the daemon's side of runtime control.
type ServerControl interface {
	// SetServer applies req; its errors wrap ErrUnknownService,
	// ErrUnknownServer or ErrBadRequest when they are the caller's.
	SetServer(ctx context.Context, req ServerRequest) error
	Standing(service string, addr netip.AddrPort) (Standing, bool)
}

// Error kinds in a failed reply, so that the client can give back the
// sentinel.
var errorKinds = []struct {
	kind string
	err  error
	code int
}{
	{"unknown_service", ErrUnknownService, http.StatusNotFound},
	{"unknown_server", ErrUnknownServer, http.StatusNotFound},
	{"bad_request", ErrBadRequest, http.StatusBadRequest},
}

// errNoControl: the daemon has no runtime control (ctl.Server.Servers nil).
var errNoControl = &httpError{http.StatusServiceUnavailable, "runtime control of real servers is not available"}

func (s *Server) handleServer(w http.ResponseWriter, r *http.Request) {
	if s.Servers == nil {
		reply(w, nil, errNoControl)
		return
	}
	var req ServerRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		reply(w, nil, fmt.Errorf("%w: %v", ErrBadRequest, err))
		return
	}
	if err := req.Validate(); err != nil {
		reply(w, nil, err)
		return
	}
	if err := s.Servers.SetServer(r.Context(), req); err != nil {
		reply(w, nil, err)
		return
	}
	rs, err := s.server(r.Context(), req.Service, req.Address)
	reply(w, rs, err)
}

// server is the RealServer of the services view.
func (s *Server) server(ctx context.Context, service string, addr netip.AddrPort) (RealServer, error) {
	for _, svc := range s.Services(ctx).Services {
		if svc.Name != service {
			continue
		}
		for _, rs := range svc.Servers {
			if rs.Address == addr && !rs.Sorry {
				return rs, nil
			}
		}
		return RealServer{}, fmt.Errorf("%w %s in service %q", ErrUnknownServer, addr, service)
	}
	return RealServer{}, fmt.Errorf("%w %q", ErrUnknownService, service)
}

// handleConns answers /v1/conns, with the query's service and server (an
// address:port) keeping only that service's connections to that server.
func (s *Server) handleConns(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	service, server := q.Get("service"), q.Get("server")
	if service == "" && server == "" {
		reply(w, s.Conns(r.Context()), nil)
		return
	}
	addr, err := netip.ParseAddrPort(server)
	if service == "" || err != nil {
		reply(w, nil, fmt.Errorf("%w: want service=NAME&server=ADDRESS:PORT", ErrBadRequest))
		return
	}
	reply(w, s.conns(r.Context(), func(c *Conn) bool { return c.Service == service && c.Server == addr }), nil)
}

// ServerConns fetches the connections of service to server (a daemon
// without the filter answers them all: the caller filters again).
func (c *Client) ServerConns(ctx context.Context, service string, server netip.AddrPort) (*Conns, error) {
	var v Conns
	q := url.Values{"service": {service}, "server": {server.String()}}
	return &v, c.Get(ctx, PathConns+"?"+q.Encode(), &v)
}

// Ended reports whether the connection has ended (a FIN or a reset seen)
// and only waits out its timeout in the table.
func (c *Conn) Ended() bool {
	return c.State == ipvs.StateFinWait.String() || c.State == ipvs.StateClose.String()
}

// SetServer posts req and returns the server after the change. Its errors
// wrap ErrUnknownService, ErrUnknownServer and ErrBadRequest when the
// daemon answers them.
func (c *Client) SetServer(ctx context.Context, req ServerRequest) (*RealServer, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var v RealServer
	return &v, c.do(ctx, http.MethodPost, PathServer, body, &v)
}

// standing fills in a configured server's state, and its health and
// overrides when the daemon has runtime control.
func (s *Server) standing(r *RealServer, service string) {
	if s.Servers != nil {
		if st, ok := s.Servers.Standing(service, r.Address); ok {
			r.Check, r.Health, r.Since, r.LastFailure, r.LastCause = st.Check, st.Health, st.Since, st.LastFailure, st.LastCause
			w := st.ConfigWeight
			r.ConfigWeight, r.Override = &w, st.Override
		}
	}
	// As the daemon's log and notify say it: a drained server (weight 0)
	// is up, its weight shows it takes no new connections.
	r.State = "up"
	if r.Down {
		r.State = "down"
	}
}
