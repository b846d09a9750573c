// Command demo shows nfhelperd balancing FTP in a throw-away namespace
// topology (see package topo). Run as root from the module root:
//
//	go run ./integration/demo [-bin path/to/nfhelperd]
//
// It builds the topology, writes the reference config, starts the daemon,
// fetches server.txt and big.bin through the VIP with curl on one control
// connection (PASV over IPv4, then EPSV over IPv6), prints the sha256 and
// which real server answered, and tears everything down, also on Ctrl-C.
// It exits non-zero if a transfer fails or a hash does not match.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

func main() {
	bin := flag.String("bin", "", "nfhelperd binary (default: go build ./cmd/nfhelperd into a temp dir)")
	flag.Parse()
	code := run(*bin)
	os.Exit(code)
}

func run(bin string) int {
	logf := func(format string, args ...any) { fmt.Printf("demo: "+format+"\n", args...) }
	ctx, tmp, done, err := topo.StartTool("demo")
	if err != nil {
		logf("%v", err)
		return topo.ExitCode(err)
	}
	defer done()
	if bin == "" {
		logf("building ./cmd/nfhelperd")
	}
	if bin, err = topo.DaemonBinary(ctx, tmp, bin); err != nil {
		logf("%v", err)
		return 1
	}

	tp, err := topo.New(topo.Options{Dir: filepath.Join(tmp, "topo"), Logf: logf})
	if err != nil {
		logf("topology: %v", err)
		return 1
	}
	defer func() {
		if err := tp.Close(); err != nil {
			logf("teardown: %v", err)
		}
		logf("topology removed")
	}()
	d, _, err := tp.StartReference(bin)
	if err != nil {
		logf("%v", err)
		return 1
	}
	logf("nfhelperd ready: datapath=%s (log: %s)", d.Datapath, d.LogPath)

	if ctx.Err() != nil {
		d.Stop()
		return 130
	}
	ok := true
	for _, m := range []struct {
		name, host string
		args       []string
	}{
		{"PASV, IPv4", topo.VIP4, []string{"--ftp-pasv", "--disable-epsv", "--no-ftp-skip-pasv-ip"}},
		{"EPSV, IPv6", "[" + topo.VIP6 + "]", []string{"--ftp-pasv"}},
	} {
		if !fetch(ctx, tp, logf, m.name, m.host, m.args) {
			ok = false
		}
	}

	if ctx.Err() != nil {
		logf("interrupted")
		d.Stop()
		return 130
	}
	res, err := d.Stop()
	switch {
	case err != nil:
		logf("stopping nfhelperd: %v", err)
		ok = false
	default:
		logf("nfhelperd stopped: exit code %d, table inet nfhelper removed: %v", res.ExitCode, res.TableGone)
		if res.ExitCode != 0 || !res.TableGone {
			ok = false
		}
	}
	if !ok {
		logf("FAILED")
		return 1
	}
	logf("OK")
	return 0
}

// fetch gets server.txt and big.bin on one control connection (curl reuses
// it for URLs of the same host), so server.txt names the real server that
// also served big.bin.
func fetch(ctx context.Context, tp *topo.Topo, logf func(string, ...any), name, host string, modeArgs []string) bool {
	dir, err := os.MkdirTemp(tp.Dir, "curl-")
	if err != nil {
		logf("%v", err)
		return false
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		logf("%v", err)
		return false
	}
	who, big := filepath.Join(dir, "server.txt"), filepath.Join(dir, "big.bin")
	args := append([]string{"-q", "-sS", "-g", "--connect-timeout", "10", "--max-time", "120"}, modeArgs...)
	args = append(args,
		"-o", who, "ftp://"+host+"/server.txt",
		"-o", big, "ftp://"+host+"/big.bin")
	cctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if _, err := tp.Run(cctx, tp.Client, "curl", args...); err != nil {
		logf("%s: curl: %v", name, err)
		return false
	}
	server, err1 := os.ReadFile(who)
	data, err2 := os.ReadFile(big)
	if err := errors.Join(err1, err2); err != nil {
		logf("%s: %v", name, err)
		return false
	}
	sum := sha256.Sum256(data)
	got := hex.EncodeToString(sum[:])
	want := tp.Files["big.bin"]
	match := got == want
	logf("%s: ftp://%s/big.bin %d bytes sha256 %s, answered by %s, matches: %v",
		name, host, len(data), got, strings.TrimSpace(string(server)), match)
	if !match {
		logf("%s: expected sha256 %s", name, want)
	}
	return match
}
