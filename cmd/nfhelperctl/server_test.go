package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/ctl"
)

// fakeDaemon answers POST /v1/server and GET /v1/conns for one service
// "ftp" with one server 10.0.0.11:21, whose open connections end one by
// one, one at each look.
type fakeDaemon struct {
	mu       sync.Mutex
	rs       ctl.RealServer
	open     int // connections when the wait starts
	looks    int
	requests []ctl.ServerRequest
}

var fakeRS = netip.MustParseAddrPort("10.0.0.11:21")

func (f *fakeDaemon) serve(t *testing.T) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+ctl.PathServer, func(w http.ResponseWriter, r *http.Request) {
		var req ctl.ServerRequest
		json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.requests = append(f.requests, req)
		switch {
		case req.Service != "ftp":
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(map[string]string{"error": fmt.Sprintf("unknown service %q", req.Service), "kind": "unknown_service"})
			return
		case req.Address != fakeRS:
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(map[string]string{"error": fmt.Sprintf("unknown real server %s in service \"ftp\"", req.Address), "kind": "unknown_server"})
			return
		}
		switch req.Op {
		case ctl.OpDrain:
			f.rs.Weight = 0
			f.rs.Override = &ctl.Override{Drained: true}
		case ctl.OpWeight:
			f.rs.Weight = req.Weight
			f.rs.Override = &ctl.Override{Weight: &req.Weight}
		}
		json.NewEncoder(w).Encode(f.rs)
	})
	mux.HandleFunc("GET "+ctl.PathConns, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if r.URL.Query().Get("service") != "ftp" || r.URL.Query().Get("server") != fakeRS.String() {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		f.looks++
		// At each look one more connection ends; another service's and
		// server's are in the reply too (an older daemon's would be).
		cs := ctl.Conns{Conns: []ctl.Conn{
			{Service: "other", Server: fakeRS, State: "ESTABLISHED"},
			{Service: "ftp", Server: netip.MustParseAddrPort("10.0.0.12:21"), State: "ESTABLISHED"},
		}}
		for i := range f.open {
			state := "ESTABLISHED"
			if i < f.looks-1 {
				state = []string{"FIN_WAIT", "CLOSE"}[i%2]
			}
			cs.Conns = append(cs.Conns, ctl.Conn{Service: "ftp", Server: fakeRS, State: state})
		}
		json.NewEncoder(w).Encode(cs)
	})
	path := filepath.Join(t.TempDir(), "fake.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return path
}

func TestServerCommand(t *testing.T) {
	f := &fakeDaemon{rs: ctl.RealServer{Address: fakeRS, Weight: 1, State: "up", Health: "up", Check: "tcp"}}
	path := f.serve(t)
	code, out, errOut := ctlRun("--socket", path, "server", "ftp", "10.0.0.11:21", "weight", "5")
	want := "ftp 10.0.0.11:21: weight 5, 0 connections (0 active, 0 inactive)\n  state up; health up (tcp); override weight 5\n"
	if code != 0 || out != want || errOut != "" {
		t.Errorf("weight: exit %d, stdout %q (want %q), stderr %q", code, out, want, errOut)
	}
	// Options between the arguments; JSON.
	code, out, errOut = ctlRun("server", "--json", "ftp", "--socket", path, "10.0.0.11:21", "drain")
	var rs ctl.RealServer
	if err := json.Unmarshal([]byte(out), &rs); code != 0 || err != nil || rs.Override == nil || !rs.Override.Drained {
		t.Errorf("drain --json: exit %d, %v, stdout %q, stderr %q", code, err, out, errOut)
	}
	// IPv4-mapped addresses are the IPv4 ones, as in the file.
	if code, _, errOut := ctlRun("--socket", path, "server", "ftp", "[::ffff:10.0.0.11]:21", "up"); code != 0 {
		t.Errorf("mapped address: exit %d, %q", code, errOut)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"server", "nope", "10.0.0.11:21", "down"}, "nfhelperctl: nfhelperd: unknown service \"nope\"\n"},
		{[]string{"server", "ftp", "10.0.0.12:21", "down"}, "nfhelperctl: nfhelperd: unknown real server 10.0.0.12:21 in service \"ftp\"\n"},
	} {
		code, out, errOut := ctlRun(append([]string{"--socket", path}, tc.args...)...)
		if code != 1 || out != "" || errOut != tc.want {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 1 and %q", tc.args, code, out, errOut, tc.want)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	want4 := []ctl.ServerRequest{{Service: "ftp", Address: fakeRS, Op: "weight", Weight: 5}, {Service: "ftp", Address: fakeRS, Op: "drain"},
		{Service: "ftp", Address: fakeRS, Op: "up"}}
	if len(f.requests) != 5 || fmt.Sprint(f.requests[:3]) != fmt.Sprint(want4) {
		t.Errorf("requests %+v", f.requests)
	}
}

func TestServerDrainWait(t *testing.T) {
	waitPoll = time.Millisecond
	t.Cleanup(func() { waitPoll = time.Second })
	f := &fakeDaemon{rs: ctl.RealServer{Address: fakeRS, Weight: 1, Active: 3, Inactive: 1, State: "up"}, open: 3}
	path := f.serve(t)
	code, out, errOut := ctlRun("--socket", path, "server", "ftp", "10.0.0.11:21", "drain", "--wait")
	want := `ftp 10.0.0.11:21: weight 0, 4 connections (3 active, 1 inactive)
  state up; override drained
ftp 10.0.0.11:21: 3 connections left
ftp 10.0.0.11:21: 2 connections left
ftp 10.0.0.11:21: 1 connection left
ftp 10.0.0.11:21: no connections left
`
	if code != 0 || out != want || errOut != "" {
		t.Errorf("exit %d, stdout\n%s\nwant\n%s\nstderr %q", code, out, want, errOut)
	}
	// With --json, the progress goes to stderr, the server to stdout.
	f.mu.Lock()
	f.looks, f.open = 0, 1
	f.mu.Unlock()
	code, out, errOut = ctlRun("--socket", path, "--json", "server", "ftp", "10.0.0.11:21", "drain", "--wait")
	var rs ctl.RealServer
	if err := json.Unmarshal([]byte(out), &rs); code != 0 || err != nil || rs.Address != fakeRS ||
		!strings.HasSuffix(errOut, "ftp 10.0.0.11:21: 1 connection left\n") {
		t.Errorf("json: exit %d, %v, stdout %q, stderr %q", code, err, out, errOut)
	}
	// No open connection: at once.
	f.mu.Lock()
	f.looks, f.open = 0, 0
	f.mu.Unlock()
	code, out, errOut = ctlRun("--socket", path, "server", "ftp", "10.0.0.11:21", "drain", "--wait")
	if code != 0 || !strings.HasSuffix(out, "  state up; override drained\nftp 10.0.0.11:21: no connections left\n") {
		t.Errorf("none: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// TestServerDrainWaitError: a failing request ends the wait with an error.
func TestServerDrainWaitError(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+ctl.PathServer, func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(ctl.RealServer{Address: fakeRS, Active: 1})
	})
	mux.HandleFunc("GET "+ctl.PathConns, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		w.Write([]byte(`{"error":"broken"}`))
	})
	path := filepath.Join(t.TempDir(), "broken.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux}
	go hs.Serve(ln)
	defer hs.Close()
	code, _, errOut := ctlRun("--socket", path, "server", "ftp", "10.0.0.11:21", "drain", "--wait")
	if want := "nfhelperctl: nfhelperd: broken\n"; code != 1 || errOut != want {
		t.Errorf("exit %d, stderr %q; want %q", code, errOut, want)
	}
}

// TestServerAgainstDaemon: the real control server without runtime control
// answers a clear error.
func TestServerAgainstDaemon(t *testing.T) {
	path := daemon(t, nil)
	code, _, errOut := ctlRun("--socket", path, "server", "ftp", "10.0.0.11:21", "drain")
	if want := "nfhelperctl: nfhelperd: runtime control of real servers is not available\n"; code != 1 || errOut != want {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}
