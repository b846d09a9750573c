//go:build integration

package integration

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nfhelper/nfhelper/integration/topo"
)

// resumeClient holds one control connection to the quirky server as
// "bare227" ("227 h1,...,p2": no text to absorb a longer address, so every
// rewrite changes the reply's length), downloads small.bin, waits for a
// line on stdin, downloads it again on the same control connection and
// quits.
const resumeClient = `import ftplib, hashlib, json, sys
host = sys.argv[1]
out = sys.stdout
sys.stdout = sys.stderr
ftp = ftplib.FTP(timeout=20)
ftp.trust_server_pasv_ipv4_address = True
ftp.set_debuglevel(1)
ftp.connect(host, 2321)
ftp.login("bare227", "x")
def get():
    h = hashlib.sha256()
    ftp.retrbinary("RETR small.bin", h.update)
    return h.hexdigest()
out.write(json.dumps({"sha256": get()}) + "\n"); out.flush()
sys.stdin.readline()
second = get()
bye = ftp.quit()
out.write(json.dumps({"sha256": second, "quit": bye}) + "\n"); out.flush()
`

// resumer is a control connection held across a daemon's crash.
type resumer struct {
	stdin io.WriteCloser
	lines *bufio.Scanner
	trace *topo.SyncBuffer
}

// startResume opens the control connection and makes its first transfer,
// which lengthens a 227 reply.
func startResume(t *testing.T) *resumer {
	t.Helper()
	tp := harness.tp
	script := filepath.Join(t.TempDir(), "resume.py")
	if err := os.WriteFile(script, []byte(resumeClient), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &resumer{trace: &topo.SyncBuffer{}}
	r.stdin, r.lines = startScripted(t, 2*time.Minute, r.trace, script, topo.VIP4)
	if res := r.next(t, "before the crash"); res["sha256"] != tp.Files["small.bin"] {
		t.Fatalf("before the crash: sha256 %s", res["sha256"])
	}
	return r
}

func (r *resumer) next(t *testing.T, what string) map[string]string {
	t.Helper()
	if !r.lines.Scan() {
		t.Fatalf("%s: the client ended: %v\n%s", what, r.lines.Err(), tailString(r.trace.String(), 3000))
	}
	var res map[string]string
	if err := json.Unmarshal(r.lines.Bytes(), &res); err != nil {
		t.Fatalf("%s: %q: %v", what, r.lines.Text(), err)
	}
	return res
}

// finish checks that daemon d, whose log from byte from on is its own,
// took the connection and its offsets back: a second transfer and QUIT on
// it work. The compat datapath takes connections back from the stale table
// and conntrack at start; the kernel datapath from the helper data and
// seqadj records the kernel kept, with the connection's next packet.
func (r *resumer) finish(t *testing.T, d *topo.Daemon, from int) {
	tp := harness.tp
	if !kernelDatapath() {
		took := regexp.MustCompile(`took over a stale table" elements=(\d+) connections=(\d+)`).FindStringSubmatch(d.Log()[from:])
		if took == nil {
			t.Fatalf("the new daemon did not take over the stale table:\n%s", d.Log()[from:])
		}
		if n, _ := strconv.Atoi(took[2]); n < 1 {
			t.Errorf("no connection taken back from conntrack: %s", took[0])
		}
		t.Logf("after the restart: %s", took[0])
	}
	io.WriteString(r.stdin, "go\n")
	res := r.next(t, "after the restart")
	if res["sha256"] != tp.Files["small.bin"] {
		t.Errorf("after the restart: sha256 %s, want %s", res["sha256"], tp.Files["small.bin"])
	}
	if !strings.HasPrefix(res["quit"], "221") {
		t.Errorf("QUIT answered %q", res["quit"])
	}
	if kernelDatapath() && !strings.Contains(d.Log()[from:], "connection restored from the kernel's helper data") {
		t.Errorf("the connection was not restored from the kernel's helper data:\n%s", tailString(d.Log()[from:], 3000))
	}
	if t.Failed() {
		t.Logf("client trace:\n%s", tailString(r.trace.String(), 3000))
	}
}
