package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/nfhelper/nfhelper/integration/ftpclient"
	"github.com/nfhelper/nfhelper/integration/topo"
)

// A session is one FTP session of a sessionLoop: which real server served
// it (its server.txt), or why it failed.
type session struct {
	start, end time.Time
	server     string
	err        error
}

// sessionLoop runs FTP sessions through one address from the client's
// namespace: workers at a time, each starting one every `every` (or as soon
// as its last ended, if that took longer), so that both systems of the
// health comparison see the same offered load. Each session logs in, fetches
// server.txt over PASV and quits.
type sessionLoop struct {
	mu       sync.Mutex
	sessions []session
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// sessionStep bounds each protocol step of a loop's session.
var sessionStep = topo.Scaled(2 * time.Second)

func (e *env) startLoop(addr string, workers int, every time.Duration) *sessionLoop {
	l := &sessionLoop{stop: make(chan struct{})}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			// The sockets must be made in the client's namespace: the
			// whole loop runs on a thread switched into it.
			err := topo.Do(e.tp.Client, func() error {
				for next := time.Now(); ; next = next.Add(every) {
					if d := time.Until(next); d > 0 {
						select {
						case <-l.stop:
							return nil
						case <-time.After(d):
						}
					} else {
						next = time.Now()
						select {
						case <-l.stop:
							return nil
						default:
						}
					}
					s := oneSession(addr)
					l.mu.Lock()
					l.sessions = append(l.sessions, s)
					l.mu.Unlock()
				}
			})
			if err != nil {
				logf("health: session loop: %v", err)
			}
		}()
	}
	return l
}

// end stops the loop and waits for its running sessions; again, it does
// nothing.
func (l *sessionLoop) end() {
	l.stopOnce.Do(func() { close(l.stop) })
	l.wg.Wait()
}

// since is a copy of the sessions that started at or after t.
func (l *sessionLoop) since(t time.Time) []session {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []session
	for _, s := range l.sessions {
		if !s.start.Before(t) {
			out = append(out, s)
		}
	}
	return out
}

// waitServed waits until a session that started at or after t was served
// by server, and returns it.
func (l *sessionLoop) waitServed(ctx context.Context, t time.Time, server string, limit time.Duration) (session, bool) {
	end := time.Now().Add(limit)
	for time.Now().Before(end) && ctx.Err() == nil {
		for _, s := range l.since(t) {
			if s.err == nil && s.server == server {
				return s, true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return session{}, false
}

// oneSession runs one session through addr; it must run in the client's
// namespace.
func oneSession(addr string) session {
	s := session{start: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), 3*sessionStep)
	defer cancel()
	c, err := ftpclient.DialWith(ctx, addr, &net.Dialer{Timeout: sessionStep})
	if err == nil {
		c.Timeout = sessionStep
		c.Mode = ftpclient.PASV
		err = c.Login(ctx, "anonymous", "reference@")
		var b []byte
		if err == nil {
			b, err = c.Retr(ctx, "server.txt")
		}
		if err == nil {
			s.server = strings.TrimSpace(string(b))
			err = c.Quit(ctx)
		}
		c.Close()
	}
	if err != nil {
		s.err = fmt.Errorf("session through %s: %w", addr, err)
	}
	s.end = time.Now()
	return s
}

// heldSession is a session logged in through the VIP and kept open: it
// was served by server and can fetch files later.
type heldSession struct {
	c      *ftpclient.Client
	server string
}

// holdSession opens sessions through addr until one is served by server
// (at most tries), and keeps that one open.
func (e *env) holdSession(addr, server string, tries int) (*heldSession, error) {
	var last string
	for range tries {
		var h *heldSession
		err := topo.Do(e.tp.Client, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 3*sessionStep)
			defer cancel()
			c, err := ftpclient.DialWith(ctx, addr, &net.Dialer{Timeout: sessionStep})
			if err != nil {
				return err
			}
			c.Timeout, c.Mode = sessionStep, ftpclient.PASV
			var b []byte
			if err = c.Login(ctx, "anonymous", "reference@"); err == nil {
				b, err = c.Retr(ctx, "server.txt")
			}
			if err != nil {
				c.Close()
				return err
			}
			h = &heldSession{c: c, server: strings.TrimSpace(string(b))}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if h.server == server {
			return h, nil
		}
		last = h.server
		h.c.Close()
	}
	return nil, fmt.Errorf("%d sessions, none served by %s (last: %s)", tries, server, last)
}

// finish fetches small.bin on the held session (a new data connection, in
// the client's namespace) and quits; it returns the content's sha256.
func (e *env) finishHeld(h *heldSession) error {
	defer h.c.Close()
	return topo.Do(e.tp.Client, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*sessionStep)
		defer cancel()
		_, sum, err := h.c.RetrSHA256(ctx, "small.bin")
		if err != nil {
			return err
		}
		if got := fmt.Sprintf("%x", sum); got != e.tp.Files["small.bin"] {
			return fmt.Errorf("small.bin: sha256 %s, want %s", got, e.tp.Files["small.bin"])
		}
		return h.c.Quit(ctx)
	})
}
