package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"syscall"
	"time"
)

// Client talks to a daemon's control socket.
type Client struct {
	Path string
	hc   *http.Client
}

// NewClient returns a client of the socket at path; each request takes at
// most timeout (0: no limit beyond the caller's context).
func NewClient(path string, timeout time.Duration) *Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &Client{Path: path, hc: &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "unix", path)
			},
			DisableKeepAlives: true,
		},
	}}
}

// NotRunningError says no daemon answers on the socket.
type NotRunningError struct {
	Path string
	Err  error
}

func (e *NotRunningError) Error() string {
	if errors.Is(e.Err, syscall.ECONNREFUSED) {
		return fmt.Sprintf("nfhelperd is not running (stale socket at %s: connection refused)", e.Path)
	}
	return fmt.Sprintf("nfhelperd is not running (no socket at %s)", e.Path)
}

func (e *NotRunningError) Unwrap() error { return e.Err }

// PermissionError says the socket exists but this user may not use it.
type PermissionError struct {
	Path string
	Err  error
}

func (e *PermissionError) Error() string {
	return fmt.Sprintf("permission denied on %s: the control socket is root only (run nfhelperctl as root)", e.Path)
}

func (e *PermissionError) Unwrap() error { return e.Err }

// Get fetches one API path (PathStatus, ...) into v.
func (c *Client) Get(ctx context.Context, path string, v any) error {
	return c.do(ctx, http.MethodGet, path, nil, v)
}

// do sends a request (body nil: none) and decodes the reply into v.
func (c *Client) do(ctx context.Context, method, path string, body []byte, v any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://nfhelperd"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.dialError(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading reply from %s: %w", c.Path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e errorReply
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return &ReplyError{Msg: e.Error, Err: kindError(e.Kind)}
		}
		return &ReplyError{Msg: resp.Status}
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("nfhelperd: bad reply to %s: %w", path, err)
	}
	return nil
}

// ReplyError is an error the daemon answered.
type ReplyError struct {
	Msg string
	Err error // the sentinel it names (ErrUnknownService, ...), or nil
}

func (e *ReplyError) Error() string { return "nfhelperd: " + e.Msg }

func (e *ReplyError) Unwrap() error { return e.Err }

func kindError(kind string) error {
	for _, k := range errorKinds {
		if k.kind == kind {
			return k.err
		}
	}
	return nil
}

func (c *Client) dialError(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.ECONNREFUSED):
		return &NotRunningError{Path: c.Path, Err: err}
	case errors.Is(err, fs.ErrPermission):
		return &PermissionError{Path: c.Path, Err: err}
	}
	return fmt.Errorf("nfhelperd at %s: %w", c.Path, err)
}

// Status fetches /v1/status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var v Status
	return &v, c.Get(ctx, PathStatus, &v)
}

// Services fetches /v1/services.
func (c *Client) Services(ctx context.Context) (*Services, error) {
	var v Services
	return &v, c.Get(ctx, PathServices, &v)
}

// Conns fetches /v1/conns.
func (c *Client) Conns(ctx context.Context) (*Conns, error) {
	var v Conns
	return &v, c.Get(ctx, PathConns, &v)
}

// Check fetches /v1/check.
func (c *Client) Check(ctx context.Context) (*CheckReport, error) {
	var v CheckReport
	return &v, c.Get(ctx, PathCheck, &v)
}

// Rules fetches /v1/rules.
func (c *Client) Rules(ctx context.Context) (*Rules, error) {
	var v Rules
	return &v, c.Get(ctx, PathRules, &v)
}
