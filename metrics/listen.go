package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// ErrNotLoopback reports a listen address that is not a loopback address
// when remote scrapers were not allowed.
var ErrNotLoopback = errors.New("metrics: listen address is not loopback")

// Listen serves h over HTTP on addr (host:port) until ctx ends, then shuts
// down gracefully and returns nil. Unless allowRemote, addr must be a
// loopback address: an empty host (every interface) or any other address is
// refused with ErrNotLoopback; a host name must resolve to loopback.
func Listen(ctx context.Context, addr string, h http.Handler, allowRemote bool) error {
	return listen(ctx, addr, h, allowRemote, nil)
}

// listen is Listen; ready, if set, gets the bound address before serving.
func listen(ctx context.Context, addr string, h http.Handler, allowRemote bool, ready func(net.Addr)) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("metrics: listen address %q: %w", addr, err)
	}
	if !allowRemote {
		// Refuse what is clearly not loopback before binding anything.
		if host == "" {
			return fmt.Errorf("%w: %q listens on every interface", ErrNotLoopback, addr)
		}
		if ip, err := netip.ParseAddr(host); err == nil && !ip.Unmap().IsLoopback() {
			return fmt.Errorf("%w: %q", ErrNotLoopback, addr)
		}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	if !allowRemote {
		// A host name is checked by what it bound to.
		if a, ok := ln.Addr().(*net.TCPAddr); !ok || !a.IP.IsLoopback() {
			ln.Close()
			return fmt.Errorf("%w: %q bound to %s", ErrNotLoopback, addr, ln.Addr())
		}
	}
	if ready != nil {
		ready(ln.Addr())
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("metrics: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	<-done // http.ErrServerClosed
	return nil
}
