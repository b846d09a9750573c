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

// fakeDaemon answers POST /v1/server and GET /v1/services for one service
// "ftp" with one server 10.0.0.11:21, whose connections count down by one
// at each look once drained.
type fakeDaemon struct {
	mu       sync.Mutex
	rs       ctl.RealServer
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
	mux.HandleFunc("GET "+ctl.PathServices, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.rs.Inactive > 0 {
			f.rs.Inactive--
		} else if f.rs.Active > 0 {
			f.rs.Active--
		}
		json.NewEncoder(w).Encode(ctl.Services{Services: []ctl.Service{{Name: "ftp", Protocol: "TCP",
			VIP: netip.MustParseAddrPort("198.51.100.10:21"), Servers: []ctl.RealServer{f.rs}}}})
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
	f := &fakeDaemon{rs: ctl.RealServer{Address: fakeRS, Weight: 1, Active: 2, Inactive: 1, State: "up"}}
	path := f.serve(t)
	code, out, errOut := ctlRun("--socket", path, "server", "ftp", "10.0.0.11:21", "drain", "--wait")
	want := `ftp 10.0.0.11:21: weight 0, 3 connections (2 active, 1 inactive)
  state up; override drained
ftp 10.0.0.11:21: 3 connections left (2 active, 1 inactive)
ftp 10.0.0.11:21: 2 connections left (2 active, 0 inactive)
ftp 10.0.0.11:21: 1 connections left (1 active, 0 inactive)
ftp 10.0.0.11:21: no connections left
`
	if code != 0 || out != want || errOut != "" {
		t.Errorf("exit %d, stdout\n%s\nwant\n%s\nstderr %q", code, out, want, errOut)
	}
	// With --json, the progress goes to stderr, the last view to stdout.
	f.mu.Lock()
	f.rs.Active = 1
	f.mu.Unlock()
	code, out, errOut = ctlRun("--socket", path, "--json", "server", "ftp", "10.0.0.11:21", "drain", "--wait")
	var rs ctl.RealServer
	if err := json.Unmarshal([]byte(out), &rs); code != 0 || err != nil || rs.Connections() != 0 ||
		!strings.Contains(errOut, "1 connections left") {
		t.Errorf("json: exit %d, %v, stdout %q, stderr %q", code, err, out, errOut)
	}
}

// TestServerDrainWaitGone: a reload that removes the server ends the wait
// with an error.
func TestServerDrainWaitGone(t *testing.T) {
	waitPoll = time.Millisecond
	t.Cleanup(func() { waitPoll = time.Second })
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+ctl.PathServer, func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(ctl.RealServer{Address: fakeRS, Active: 1})
	})
	mux.HandleFunc("GET "+ctl.PathServices, func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(ctl.Services{Services: []ctl.Service{{Name: "ftp"}}})
	})
	path := filepath.Join(t.TempDir(), "gone.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux}
	go hs.Serve(ln)
	defer hs.Close()
	code, _, errOut := ctlRun("--socket", path, "server", "ftp", "10.0.0.11:21", "drain", "--wait")
	if want := "nfhelperctl: 10.0.0.11:21 is no longer a real server of service \"ftp\" (reloaded?)\n"; code != 1 || errOut != want {
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
