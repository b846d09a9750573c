//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// Reload tests: nfhelperd rereads its configuration on SIGHUP. A reload
// applies to new connections only; running connections keep their server
// (even one the new configuration removes) and go on undisturbed. A bad file
// leaves the running configuration in place. Each test rewrites the test
// config (only the real servers of service ftp, VIP 198.51.100.10:21) and
// restores and reloads the original when done, so that the tests after this
// file see the original state.

// ftpServersBlock is the real_servers list of service ftp in the test config
// (topo.ReferenceConfig); the reload tests replace it.
const ftpServersBlock = `      - address: 10.0.0.11:21
      - address: 10.0.0.12:21
        weight: 2
`

var (
	reloadedRE     = regexp.MustCompile(`(?m)^.*(?:^|\s)msg="?reloaded(?:"|\s|$).*$`)
	reloadFailedRE = regexp.MustCompile(`(?m)^.*(?:^|\s)msg="reload failed; the running configuration stays".*$`)
)

// reloadTimeout bounds the wait for the daemon's answer to a SIGHUP.
const reloadTimeout = 15 * time.Second

// reloader rewrites the daemon's config file and makes the daemon reload it.
type reloader struct {
	d        *topo.Daemon
	path     string
	original string
	changed  bool
}

// newReloader reads the current config file and registers a cleanup that
// writes it back and reloads it, if the test changed it.
func newReloader(t *testing.T, d *topo.Daemon) *reloader {
	t.Helper()
	b, err := os.ReadFile(harness.config)
	if err != nil {
		t.Fatalf("read config: %v", err)
	}
	r := &reloader{d: d, path: harness.config, original: string(b)}
	if n := strings.Count(r.original, ftpServersBlock); n != 1 {
		t.Fatalf("the test config holds the ftp real_servers block %d times, want 1:\n%s", n, r.original)
	}
	t.Cleanup(func() {
		if !r.changed {
			return
		}
		if err := writeFileAtomic(r.path, r.original); err != nil {
			t.Errorf("restore config: %v", err)
			return
		}
		if line, err := sighupAndWait(d, true); err != nil {
			t.Errorf("reload of the original config: %v", err)
		} else {
			t.Logf("original config restored: %s", line)
		}
	})
	return r
}

// ftpServers returns the config with the ftp service's real servers
// replaced by block (YAML list items indented like ftpServersBlock).
func (r *reloader) ftpServers(block string) string {
	return strings.Replace(r.original, ftpServersBlock, block, 1)
}

// apply writes content as the config file, sends SIGHUP and waits for the
// daemon to log the reload's outcome: msg=reloaded when wantOK, the reload
// failure otherwise. It returns that log line.
func (r *reloader) apply(t *testing.T, content string, wantOK bool) string {
	t.Helper()
	if err := writeFileAtomic(r.path, content); err != nil {
		t.Fatalf("write config: %v", err)
	}
	r.changed = true
	line, err := sighupAndWait(r.d, wantOK)
	if err != nil {
		t.Fatalf("%v\nconfig:\n%s", err, content)
	}
	t.Logf("SIGHUP: %s", line)
	return line
}

// writeFileAtomic replaces path with content (write to a temporary file in
// the same directory, then rename), as an administrator's editor would.
func writeFileAtomic(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// sighupAndWait sends SIGHUP to the daemon and polls its log until a new
// msg=reloaded or reload failure line appears; it returns that line, or an
// error when the outcome is not the wanted one or the daemon exits.
func sighupAndWait(d *topo.Daemon, wantOK bool) (string, error) {
	if !d.Running() {
		return "", fmt.Errorf("nfhelperd is not running; log:\n%s", tailString(d.Log(), 3000))
	}
	okBefore := len(reloadedRE.FindAllString(d.Log(), -1))
	failBefore := len(reloadFailedRE.FindAllString(d.Log(), -1))
	// ip netns exec execs the daemon: the pid is nfhelperd's.
	if err := syscall.Kill(d.Pid(), syscall.SIGHUP); err != nil {
		return "", fmt.Errorf("SIGHUP: %w", err)
	}
	deadline := time.NewTimer(reloadTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		log := d.Log()
		if ok := reloadedRE.FindAllString(log, -1); len(ok) > okBefore {
			if !wantOK {
				return "", fmt.Errorf("nfhelperd reloaded a config it should have refused: %s", ok[len(ok)-1])
			}
			return ok[len(ok)-1], nil
		}
		if fail := reloadFailedRE.FindAllString(log, -1); len(fail) > failBefore {
			if wantOK {
				return "", fmt.Errorf("reload failed: %s", fail[len(fail)-1])
			}
			return fail[len(fail)-1], nil
		}
		if !d.Running() {
			return "", fmt.Errorf("nfhelperd exited after SIGHUP; log:\n%s", tailString(log, 3000))
		}
		select {
		case <-deadline.C:
			return "", fmt.Errorf("no reload outcome logged %v after SIGHUP; log:\n%s", reloadTimeout, tailString(log, 3000))
		case <-tick.C:
		}
	}
}

// newConnServers fetches server.txt through the VIP over n new control
// connections (Go client, PASV) and counts which real server answered.
func newConnServers(t *testing.T, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		r := runFtpget(t, harness.tp.Client, net.JoinHostPort(topo.VIP4, "21"), "pasv", "server.txt", 1)
		seen[strings.TrimSpace(r.results[0].Content)]++
	}
	return seen
}

// wantServers fails unless exactly the servers in want answered.
func wantServers(t *testing.T, what string, seen map[string]int, want ...string) {
	t.Helper()
	t.Logf("%s: %v", what, seen)
	for _, s := range want {
		if seen[s] == 0 {
			t.Errorf("%s: real server %s never answered: %v", what, s, seen)
		}
	}
	if len(seen) != len(want) {
		t.Errorf("%s: answered by %v, want only %v", what, seen, want)
	}
}

// slowClient is a paced ftplib client: on one control connection it fetches
// server.txt (printing "server NAME"), then big.bin at RATE bytes/s
// (printing "started" with the first block), then server.txt again; it
// ends with a JSON line. PASV with the 227 address trusted, as
// testdata/ftpget.py. (curl 7.88's --limit-rate is not reliable here: a 4 MiB
// transfer limited to 256K sometimes took 0.2 s.)
const slowClient = `import ftplib, hashlib, json, sys, time
host, rate = sys.argv[1], float(sys.argv[2])
out = sys.stdout
sys.stdout = sys.stderr  # ftplib prints its debug trace with print()
ftp = ftplib.FTP(timeout=30)
ftp.trust_server_pasv_ipv4_address = True
ftp.set_debuglevel(1)
ftp.connect(host, 21)
ftp.login()
ftp.set_pasv(True)
def small():
    b = bytearray()
    ftp.retrbinary("RETR server.txt", b.extend)
    return b.decode().strip()
first = small()
out.write("server %s\n" % first); out.flush()
h, n, t0 = hashlib.sha256(), 0, time.monotonic()
def cb(b):
    global n
    if n == 0:
        out.write("started\n"); out.flush()
    h.update(b)
    n += len(b)
    d = t0 + n / rate - time.monotonic()
    if d > 0:
        time.sleep(d)
ftp.retrbinary("RETR big.bin", cb, blocksize=16384)
last = small()
ftp.quit()
out.write(json.dumps({"first": first, "last": last, "bytes": n, "sha256": h.hexdigest()}) + "\n")
`

// slowRate paces each big.bin (4 MiB) transfer to about 8 s.
const slowRate = 512 << 10

// slowTransfer is one run of slowClient in the client namespace.
type slowTransfer struct {
	server  chan string   // the first server.txt, once read
	started chan struct{} // closed when big.bin's first block arrived
	done    chan struct{} // closed when the client exited

	// Valid after done:
	err      error
	result   slowResult
	trace    string
	duration time.Duration
}

type slowResult struct {
	First  string `json:"first"`
	Last   string `json:"last"`
	Bytes  int    `json:"bytes"`
	SHA256 string `json:"sha256"`
}

func startSlowTransfer(t *testing.T, script string, i int) *slowTransfer {
	t.Helper()
	st := &slowTransfer{server: make(chan string, 1), started: make(chan struct{}), done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	c := harness.tp.CommandContext(ctx, harness.tp.Client, "python3", script, topo.VIP4, fmt.Sprint(slowRate))
	var stderr bytes.Buffer
	c.Stderr = &stderr
	stdout, err := c.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	begin := time.Now()
	if err := c.Start(); err != nil {
		cancel()
		t.Fatalf("start slow client %d: %v", i, err)
	}
	go func() {
		defer close(st.done)
		defer cancel()
		sc := bufio.NewScanner(stdout)
		var last string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "server "):
				st.server <- strings.TrimPrefix(line, "server ")
			case line == "started":
				close(st.started)
			default:
				last = line
			}
		}
		err := c.Wait()
		st.duration = time.Since(begin)
		st.trace = stderr.String()
		if ctx.Err() != nil {
			err = fmt.Errorf("%v (timeout)", err)
		}
		if err != nil {
			st.err = fmt.Errorf("slow client %d: %w", i, err)
			return
		}
		if jerr := json.Unmarshal([]byte(last), &st.result); jerr != nil {
			st.err = fmt.Errorf("slow client %d output %q: %w", i, last, jerr)
		}
	}()
	return st
}

func (st *slowTransfer) finished() bool {
	select {
	case <-st.done:
		return true
	default:
		return false
	}
}

// TestReloadUnderTraffic: long transfers run through the VIP, to both real
// servers, while rs2 is first quiesced (weight 0) and then removed (rs1 gets
// weight 3). New connections go to rs1 only after each reload; every running
// transfer, including those on rs2, completes with the right content, and a
// later transfer on the same control connection (a new PASV and data
// channel) still reaches its server.
func TestReloadUnderTraffic(t *testing.T) {
	d := needDaemon(t)
	tp := harness.tp
	r := newReloader(t, d)
	script := filepath.Join(t.TempDir(), "slowftp.py")
	if err := os.WriteFile(script, []byte(slowClient), 0o644); err != nil {
		t.Fatal(err)
	}

	const n = 4
	var transfers []*slowTransfer
	t.Cleanup(func() {
		// Do not leave clients running past the test (they end by timeout
		// at the latest).
		for _, st := range transfers {
			<-st.done
		}
	})
	for i := 0; i < n; i++ {
		transfers = append(transfers, startSlowTransfer(t, script, i))
	}

	// Wait until every transfer knows its server and big.bin is flowing.
	servers := make([]string, n)
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for i, st := range transfers {
		select {
		case servers[i] = <-st.server:
		case <-st.done:
			t.Fatalf("transfer %d ended before server.txt: %v\n%s", i, st.err, tailString(st.trace, 4000))
		case <-deadline.C:
			t.Fatalf("transfer %d: no server.txt after 30s", i)
		}
		select {
		case <-st.started:
		case <-st.done:
			t.Fatalf("transfer %d (%s) ended before big.bin started: %v\n%s", i, servers[i], st.err, tailString(st.trace, 4000))
		case <-deadline.C:
			t.Fatalf("transfer %d (%s): big.bin not started after 30s", i, servers[i])
		}
	}
	perServer := map[string]int{}
	for _, s := range servers {
		perServer[s]++
	}
	t.Logf("running transfers per server: %v", perServer)
	if perServer["rs1"] == 0 || perServer["rs2"] == 0 || len(perServer) != 2 {
		t.Fatalf("running transfers should be on both rs1 and rs2: %v", perServer)
	}

	// rs2 quiesced: new connections go to rs1 only.
	r.apply(t, r.ftpServers(`      - address: 10.0.0.11:21
      - address: 10.0.0.12:21
        weight: 0
`), true)
	wantServers(t, "new connections after rs2 weight 0", newConnServers(t, 6), "rs1")

	// rs2 removed, rs1 weight 3: still rs1 only.
	r.apply(t, r.ftpServers(`      - address: 10.0.0.11:21
        weight: 3
`), true)
	wantServers(t, "new connections after removing rs2", newConnServers(t, 6), "rs1")

	// The transfers must still have been running, or this tested nothing.
	for i, st := range transfers {
		if st.finished() {
			t.Errorf("transfer %d (%s) had finished before the reloads were checked; slow the transfers down (%d bytes/s)", i, servers[i], slowRate)
		}
	}

	// Every running transfer completes undisturbed, and the server.txt
	// fetched after the reloads on the same control connection comes from
	// the same server (for rs2: a server the configuration no longer has).
	want := tp.Files["big.bin"]
	for i, st := range transfers {
		<-st.done
		t.Logf("transfer %d (%s) took %v", i, servers[i], st.duration.Round(time.Millisecond))
		if st.err != nil {
			t.Errorf("transfer %d (%s): %v\n%s", i, servers[i], st.err, tailString(st.trace, 4000))
			continue
		}
		res := st.result
		if res.SHA256 != want {
			t.Errorf("transfer %d (%s): big.bin sha256 %s (%d bytes), want %s", i, servers[i], res.SHA256, res.Bytes, want)
		}
		if res.Last != servers[i] {
			t.Errorf("transfer %d: server.txt after the reloads is %q, want %q (same control connection)", i, res.Last, servers[i])
		}
		// Every 227 on the connection, those after the reloads too, named the VIP.
		// (The helper keeps the reply's length: "Entering Passive  (...)".)
		vip := strings.ReplaceAll(topo.VIP4, ".", ",") + ","
		var replies, named int
		for _, line := range strings.Split(st.trace, "\n") {
			if strings.Contains(line, "*resp* '227 ") {
				replies++
				if strings.Contains(line, vip) {
					named++
				}
			}
		}
		if replies != 3 || named != 3 {
			t.Errorf("transfer %d (%s): %d of %d 227 replies name the VIP, want 3 of 3 (the last one came after the reloads: is the running connection still helped?)\n%s", i, servers[i], named, replies, tailString(st.trace, 4000))
		}
	}
	if !d.Running() {
		t.Fatalf("nfhelperd exited")
	}
}

// onlyRS1 reloads a configuration without rs2 (rs1 at weight 3) and checks
// that new connections reach rs1 only.
func onlyRS1(t *testing.T, r *reloader) {
	t.Helper()
	r.apply(t, r.ftpServers(`      - address: 10.0.0.11:21
        weight: 3
`), true)
	wantServers(t, "new connections with rs1 only", newConnServers(t, 4), "rs1")
}

// TestReloadBadConfig: a file that does not parse, or has an unknown key,
// is refused on SIGHUP; the daemon logs the failure, keeps running and
// keeps scheduling with the configuration it had (rs1 only), although the
// bad files would otherwise bring rs2 back.
func TestReloadBadConfig(t *testing.T) {
	d := needDaemon(t)
	r := newReloader(t, d)

	onlyRS1(t, r)

	withRS2 := r.ftpServers(`      - address: 10.0.0.11:21
        weight: 3
      - address: 10.0.0.12:21
        weight: 1
`)
	bad := []struct{ name, content string }{
		// An unclosed flow sequence.
		{"invalid-yaml", strings.Replace(withRS2, "    scheduler: rr\n", "    scheduler: [rr\n", 1)},
		// A key the strict decoder does not know.
		{"unknown-key", strings.Replace(withRS2, "    scheduler: rr\n", "    scheduler: rr\n    schedular: wrr\n", 1)},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			if b.content == withRS2 {
				t.Fatal("test bug: the bad config is not different")
			}
			line := r.apply(t, b.content, false)
			if !strings.Contains(line, "err=") {
				t.Errorf("reload failure line carries no err=: %s", line)
			}
			if !d.Running() {
				t.Fatalf("nfhelperd exited after a bad reload; log:\n%s", tailString(d.Log(), 3000))
			}
			wantServers(t, "new connections after a refused reload", newConnServers(t, 4), "rs1")
			// Something bigger than server.txt still goes through.
			run := runFtpget(t, harness.tp.Client, net.JoinHostPort(topo.VIP4, "21"), "pasv", "big.bin", 1)
			if got, want := run.results[0].SHA256, harness.tp.Files["big.bin"]; got != want {
				t.Errorf("big.bin after a refused reload: sha256 %s, want %s", got, want)
			}
		})
	}
	if !d.Running() {
		t.Fatal("nfhelperd exited")
	}
}

// TestReloadAddServer: rs2 comes back (weight 1) and new connections reach
// both real servers again.
func TestReloadAddServer(t *testing.T) {
	d := needDaemon(t)
	r := newReloader(t, d)

	onlyRS1(t, r)

	r.apply(t, r.ftpServers(`      - address: 10.0.0.11:21
        weight: 3
      - address: 10.0.0.12:21
        weight: 1
`), true)
	wantServers(t, "new connections after adding rs2 back", newConnServers(t, 6), "rs1", "rs2")
	if !d.Running() {
		t.Fatal("nfhelperd exited")
	}
}
