package health

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func httpServer(t *testing.T, tls bool) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		if !r.Close {
			http.Error(w, "keep-alive asked", http.StatusBadRequest)
			return
		}
		sni := ""
		if r.TLS != nil {
			sni = r.TLS.ServerName
		}
		fmt.Fprintf(w, "all well; host=%s sni=[%s]", r.Host, sni)
	})
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ok", http.StatusFound) })
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("x", maxBody) + "needle"))
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	var s *httptest.Server
	if tls {
		s = httptest.NewTLSServer(mux)
	} else {
		s = httptest.NewServer(mux)
	}
	t.Cleanup(s.Close)
	return s
}

func serverAddr(s *httptest.Server) netip.AddrPort {
	return s.Listener.Addr().(*net.TCPAddr).AddrPort()
}

func TestHTTPCheck(t *testing.T) {
	plain, secure := httpServer(t, false), httpServer(t, true)
	for _, tc := range []struct {
		name  string
		srv   *httptest.Server
		spec  Spec
		cause string
	}{
		{name: "ok", srv: plain, spec: Spec{Type: "http", Path: "/ok", Status: 200}},
		{name: "body", srv: plain, spec: Spec{Type: "http", Path: "/ok", Status: 200, Body: "all well"}},
		{name: "host", srv: plain, spec: Spec{Type: "http", Path: "/ok", Status: 200, Host: "www.example.test", Body: "host=www.example.test "}},
		{name: "status mismatch", srv: plain, spec: Spec{Type: "http", Path: "/nowhere", Status: 200}, cause: "status"},
		{name: "expected 404", srv: plain, spec: Spec{Type: "http", Path: "/nowhere", Status: 404}},
		{name: "body mismatch", srv: plain, spec: Spec{Type: "http", Path: "/ok", Status: 200, Body: "on fire"}, cause: "body"},
		{name: "redirect not followed", srv: plain, spec: Spec{Type: "http", Path: "/moved", Status: 200}, cause: "status"},
		{name: "redirect expected", srv: plain, spec: Spec{Type: "http", Path: "/moved", Status: 302}},
		{name: "body beyond the limit", srv: plain, spec: Spec{Type: "http", Path: "/big", Status: 200, Body: "needle"}, cause: "body"},
		{name: "slow", srv: plain, spec: Spec{Type: "http", Path: "/slow", Status: 200}, cause: "timeout"},
		{name: "https", srv: secure, spec: Spec{Type: "https", Path: "/ok", Status: 200, Body: "sni=[]"}},
		{name: "https SNI", srv: secure, spec: Spec{Type: "https", Path: "/ok", Status: 200, Host: "www.example.test", Body: "sni=[www.example.test]"}},
		{name: "https SNI without the port", srv: secure, spec: Spec{Type: "https", Path: "/ok", Status: 200, Host: "www.example.test:8443", Body: "sni=[www.example.test]"}},
		{name: "https to plain", srv: plain, spec: Spec{Type: "https", Path: "/ok", Status: 200}, cause: "tls"},
		{name: "bad path", srv: plain, spec: Spec{Type: "http", Path: "ok", Status: 200}, cause: "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.spec
			s.Addr, s.Timeout = serverAddr(tc.srv), 500*time.Millisecond
			start := time.Now()
			err := Check(context.Background(), Key{}, s)
			if got := Cause(err); got != tc.cause {
				t.Errorf("cause %q (%v), want %q", got, err, tc.cause)
			}
			if d := time.Since(start); d > s.Timeout+2*time.Second { // bounded, with room for a loaded machine
				t.Errorf("took %v", d)
			}
		})
	}
}
