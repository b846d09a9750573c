// Command demo shows nfhelperd balancing FTP in a throw-away namespace
// topology (see package topo). Run as root from the module root:
//
//	go run ./integration/demo [-bin path/to/nfhelperd]
//
// It builds the topology, writes the reference config (with a tcp health
// check on the IPv4 service), starts the daemon, fetches server.txt and
// big.bin through the VIP with curl on one control connection (PASV over
// IPv4, then EPSV over IPv6), prints the sha256 and which real server
// answered. Then it stops vsftpd on rs2, shows the daemon taking rs2 out
// and the next session going to rs1, starts rs2 again and shows it back;
// and it tears everything down, also on Ctrl-C. It exits non-zero if a
// transfer fails, a hash does not match or rs2 is not taken out and back.
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

	"github.com/nfhelper/nfhelper/ctl"
	"github.com/nfhelper/nfhelper/integration/topo"
)

// demoConfig is the reference configuration with a tcp health check on the
// IPv4 service, fast enough to watch: a server is out after 2 failed checks
// half a second apart, back after 2 passes.
var demoConfig = strings.Replace(topo.ReferenceConfig, "    helper: ftp\n", "    helper: ftp\n"+
	"    health_check: {type: tcp, interval: 500ms, timeout: 400ms, fall: 2, rise: 2}\n", 1)

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
	defer tp.CloseLogged(logf)
	config := filepath.Join(tp.Dir, "demo.yaml")
	if err := os.WriteFile(config, []byte(demoConfig), 0o644); err != nil {
		logf("%v", err)
		return 1
	}
	d, err := tp.StartDaemon(bin, config)
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
		if _, fetched := fetch(ctx, tp, logf, m.name, m.host, m.args); !fetched {
			ok = false
		}
	}

	if ok && ctx.Err() == nil && !failOver(ctx, tp, logf) {
		ok = false
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
// also served big.bin; it returns that server's name, and whether the
// transfer worked with the right bytes.
func fetch(ctx context.Context, tp *topo.Topo, logf func(string, ...any), name, host string, modeArgs []string) (string, bool) {
	dir, err := os.MkdirTemp(tp.Dir, "curl-")
	if err != nil {
		logf("%v", err)
		return "", false
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		logf("%v", err)
		return "", false
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
		return "", false
	}
	server, err1 := os.ReadFile(who)
	data, err2 := os.ReadFile(big)
	if err := errors.Join(err1, err2); err != nil {
		logf("%s: %v", name, err)
		return "", false
	}
	sum := sha256.Sum256(data)
	got := hex.EncodeToString(sum[:])
	want := tp.Files["big.bin"]
	match := got == want
	answered := strings.TrimSpace(string(server))
	logf("%s: ftp://%s/big.bin %d bytes sha256 %s, answered by %s, matches: %v",
		name, host, len(data), got, answered, match)
	if !match {
		logf("%s: expected sha256 %s", name, want)
	}
	return answered, match
}

// failOver stops vsftpd on rs2, waits until the daemon takes rs2 out,
// fetches through the VIP (rs1 must answer), starts rs2 again and waits
// until it is back.
func failOver(ctx context.Context, tp *topo.Topo, logf func(string, ...any)) bool {
	var rs2 *topo.Server
	for _, s := range tp.Servers {
		if s.Name == "rs2" {
			rs2 = s
		}
	}
	addr := rs2.V4 + ":21"
	logf("health check: stopping vsftpd on rs2 (%s)", addr)
	start := time.Now()
	tp.StopServer(ctx, rs2)
	rs, ok := awaitState(ctx, tp, addr, "down")
	if !ok {
		logf("rs2 was not taken out")
		return false
	}
	logf("rs2 taken out after %.1fs (tcp check: %s); new sessions go to rs1", time.Since(start).Seconds(), rs.LastCause)
	if who, ok := fetch(ctx, tp, logf, "PASV, IPv4, rs2 down", topo.VIP4, []string{"--ftp-pasv", "--disable-epsv", "--no-ftp-skip-pasv-ip"}); !ok || who != "rs1" {
		if ok {
			logf("answered by %s while rs2 was down, want rs1", who)
		}
		return false
	}
	if _, err := tp.StartVsftpd(ctx, rs2); err != nil {
		logf("starting vsftpd on rs2 again: %v", err)
		return false
	}
	start = time.Now()
	if _, ok := awaitState(ctx, tp, addr, "up"); !ok {
		logf("rs2 did not come back")
		return false
	}
	logf("rs2 back after %.1fs (2 passing checks in a row)", time.Since(start).Seconds())
	return true
}

// awaitState polls the daemon's control socket, for at most 10 s, until
// real server addr of service ftp shows state.
func awaitState(ctx context.Context, tp *topo.Topo, addr, state string) (ctl.RealServer, bool) {
	c := ctl.NewClient(tp.ControlSocket(), 2*time.Second)
	ctx, cancel := context.WithTimeout(ctx, topo.Scaled(10*time.Second))
	defer cancel()
	for ctx.Err() == nil {
		if v, err := c.Services(ctx); err == nil {
			for _, svc := range v.Services {
				for _, rs := range svc.Servers {
					if svc.Name == "ftp" && rs.Address.String() == addr && rs.State == state {
						return rs, true
					}
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return ctl.RealServer{}, false
}
