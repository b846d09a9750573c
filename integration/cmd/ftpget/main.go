// Command ftpget fetches files over one FTP control connection with the
// integration ftpclient and prints one JSON object per transfer:
//
//	{"i":0,"file":"big.bin","bytes":4194304,"sha256":"…","data_peer":"…","passive_reply":"…","content":"…"}
//
// content is set for files of at most 256 bytes. The tests run it inside the
// client namespace with ip netns exec.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/nfhelper/nfhelper/integration/ftpclient"
	"golang.org/x/sys/unix"
)

type result struct {
	I            int    `json:"i"`
	File         string `json:"file"`
	Bytes        int64  `json:"bytes"`
	SHA256       string `json:"sha256"`
	DataPeer     string `json:"data_peer"`
	PassiveReply string `json:"passive_reply,omitempty"`
	Content      string `json:"content,omitempty"`
	Control      string `json:"control"`
}

// prefix keeps the first 256 bytes written to it.
type prefix struct{ b []byte }

func (p *prefix) Write(b []byte) (int, error) {
	if room := 256 - len(p.b); room > 0 {
		p.b = append(p.b, b[:min(room, len(b))]...)
	}
	return len(b), nil
}

func main() {
	addr := flag.String("addr", "", "server host:port, e.g. 198.51.100.10:21 or [2001:db8:1::10]:21")
	mode := flag.String("mode", "pasv", "data connection mode: pasv, epsv, port or eprt")
	files := flag.String("files", "big.bin", "comma-separated files, fetched in turn")
	n := flag.Int("n", 0, "number of transfers (cycling through -files); default one per file")
	timeout := flag.Duration("timeout", 30*time.Second, "timeout of each protocol step")
	total := flag.Duration("total", 5*time.Minute, "timeout of the whole run")
	trace := flag.Bool("trace", false, "write the protocol exchange to stderr")
	user := flag.String("user", "", "login name (default anonymous)")
	pass := flag.String("pass", "nfhelper@example.com", "password")
	ipopts := flag.Bool("ipopts", false, "send the control connection's packets with IPv4 options (NOPs) or an IPv6 destination-options header")
	flag.Parse()
	if err := run(*addr, *mode, *files, *n, *timeout, *total, *trace, *user, *pass, *ipopts); err != nil {
		fmt.Fprintln(os.Stderr, "ftpget:", err)
		os.Exit(1)
	}
}

func run(addr, modeName, fileList string, n int, timeout, total time.Duration, trace bool, user, pass string, ipOptions bool) error {
	if addr == "" {
		return fmt.Errorf("-addr is required")
	}
	mode, err := ftpclient.ParseMode(modeName)
	if err != nil {
		return err
	}
	names := strings.Split(fileList, ",")
	if n <= 0 {
		n = len(names)
	}
	ctx, cancel := context.WithTimeout(context.Background(), total)
	defer cancel()

	d := &net.Dialer{}
	if ipOptions {
		d.Control = withIPOptions
	}
	c, err := ftpclient.DialWith(ctx, addr, d)
	if err != nil {
		return err
	}
	defer c.Close()
	c.Mode, c.Timeout = mode, timeout
	if trace {
		c.Trace = os.Stderr
	}
	if err := c.Login(ctx, user, pass); err != nil {
		return fmt.Errorf("login: %w", err)
	}
	enc := json.NewEncoder(os.Stdout)
	for i := 0; i < n; i++ {
		name := names[i%len(names)]
		h := sha256.New()
		var head prefix
		size, err := c.RetrTo(ctx, name, io.MultiWriter(h, &head))
		if err != nil {
			return fmt.Errorf("transfer %d (%s): %w", i, name, err)
		}
		r := result{
			I: i, File: name, Bytes: size, SHA256: hex.EncodeToString(h.Sum(nil)),
			DataPeer: c.LastDataPeer, PassiveReply: c.LastPassiveReply,
			Control: c.LocalAddr().String() + "->" + c.RemoteAddr().String(),
		}
		if size <= 256 {
			r.Content = string(head.b)
		}
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return c.Quit(ctx)
}

// withIPOptions makes every packet of the socket carry IPv4 options (four
// NOPs) or, over IPv6, a destination-options extension header (PadN): what
// the daemon's parser must step over.
func withIPOptions(network, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		if strings.HasSuffix(network, "6") {
			serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IPV6, unix.IPV6_DSTOPTS, string([]byte{0, 0, 1, 4, 0, 0, 0, 0}))
		} else {
			serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IP, unix.IP_OPTIONS, string([]byte{1, 1, 1, 1}))
		}
	})
	if err != nil {
		return err
	}
	return serr
}
