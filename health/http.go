package health

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
)

// maxBody is how much of a response body is read for a Body match.
const maxBody = 64 << 10

// checkHTTP sends GET Path (with Host if set) and passes on Status and, if
// Body is set, a body holding it. https does not verify the certificate (a
// check asks whether the server answers, not who it is); its server name is
// Host. No redirect is followed and no connection kept.
func checkHTTP(ctx context.Context, s Spec) error {
	if !strings.HasPrefix(s.Path, "/") {
		return fmt.Errorf("path %q does not start with /", s.Path)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.Type+"://"+s.Addr.String()+s.Path, nil)
	if err != nil {
		return err
	}
	if s.Host != "" {
		req.Host = s.Host
	}
	req.Close = true
	req.Header.Set("User-Agent", "nfhelperd-health-check")
	// Every dial goes to the checked address whatever the URL says.
	addr := s.Addr.String()
	// No Proxy: the environment's proxy settings are not the check's.
	tr := &http.Transport{
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: maxBody,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dial(ctx, addr)
		},
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialTLS(ctx, addr, s.Host)
		},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != s.Status {
		return fmt.Errorf("%w: %d, want %d", ErrStatus, resp.StatusCode, s.Status)
	}
	if s.Body == "" {
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return err
	}
	if !strings.Contains(string(body), s.Body) {
		return fmt.Errorf("%w: no %q in the first %d bytes", ErrBody, s.Body, len(body))
	}
	return nil
}

func dialTLS(ctx context.Context, addr, host string) (net.Conn, error) {
	c, err := dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h // a Host header's port is no part of the server name
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: host})
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: %w", ErrTLS, err)
	}
	return tc, nil
}
