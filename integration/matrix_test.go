//go:build integration

package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// target says where the FTP clients run and whom they talk to.
type target struct {
	ns           string        // namespace the clients run in
	host4, host6 string        // control connection addresses
	pasv4        string        // address expected in 227 replies
	peer4, peer6 string        // expected source address of active data connections
	port         int           // control port; 21 when zero
	maxTime      time.Duration // bound of one client run; 2 minutes when zero
}

func (tg target) ctlPort() int {
	if tg.port == 0 {
		return 21
	}
	return tg.port
}

// mcase is one cell of the client matrix.
type mcase struct {
	tool string // curl, lftp, python, go
	mode string // pasv, epsv, port, eprt: the command the client must use
	v6   bool
}

func (c mcase) name() string {
	fam := "v4"
	if c.v6 {
		fam = "v6"
	}
	return c.tool + "/" + c.mode + "-" + fam
}

// matrix holds every (tool, data command, family) combination that exists:
// PASV and PORT are IPv4-only; lftp uses EPRT only for IPv6 and PORT only for
// IPv4; ftplib uses PASV/PORT for IPv4 and EPSV/EPRT for IPv6.
var matrix = []mcase{
	{"curl", "pasv", false}, {"curl", "epsv", false}, {"curl", "epsv", true},
	{"curl", "port", false}, {"curl", "eprt", false}, {"curl", "eprt", true},

	{"lftp", "pasv", false}, {"lftp", "epsv", false}, {"lftp", "epsv", true},
	{"lftp", "port", false}, {"lftp", "eprt", true},

	{"python", "pasv", false}, {"python", "port", false},
	{"python", "epsv", true}, {"python", "eprt", true},

	{"go", "pasv", false}, {"go", "epsv", false}, {"go", "epsv", true},
	{"go", "port", false}, {"go", "eprt", false}, {"go", "eprt", true},
}

// runMatrix fetches big.bin with every matrix cell of the given tool ("" for
// all tools) and checks the sha256 and that the intended data command was used.
func runMatrix(t *testing.T, tg target, tool string) {
	for _, c := range matrix {
		if tool != "" && c.tool != tool {
			continue
		}
		t.Run(c.name(), func(t *testing.T) {
			res := fetch(t, tg, c, "big.bin")
			if want := harness.tp.Files["big.bin"]; res.sha256 != want {
				t.Errorf("big.bin sha256 = %s (%d bytes), want %s\ntrace:\n%s", res.sha256, res.bytes, want, res.trace)
			}
			checkTrace(t, tg, c, res.trace)
			if res.dataPeer != "" && (c.mode == "port" || c.mode == "eprt") {
				want := tg.peer4
				if c.v6 {
					want = tg.peer6
				}
				ap, err := netip.ParseAddrPort(res.dataPeer)
				if err != nil || ap.Addr().String() != want {
					t.Errorf("active data connection came from %s, want address %s", res.dataPeer, want)
				} else {
					t.Logf("active data connection from %s", res.dataPeer)
				}
			}
		})
	}
}

type fetchResult struct {
	sha256   string
	bytes    int
	content  string
	trace    string // the client's protocol trace
	dataPeer string // Go client only
}

func (tg target) host(v6 bool) string {
	if v6 {
		return tg.host6
	}
	return tg.host4
}

func ftpURL(host string, port int, file string) string {
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != 0 && port != 21 {
		host = fmt.Sprintf("%s:%d", host, port)
	}
	return "ftp://" + host + "/" + file
}

// fetch downloads file with one client configuration.
func fetch(t *testing.T, tg target, c mcase, file string) fetchResult {
	t.Helper()
	host := tg.host(c.v6)
	timeout := 2 * time.Minute
	if tg.maxTime > 0 {
		timeout = tg.maxTime
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, file)
	var res fetchResult

	switch c.tool {
	case "curl":
		args := []string{"-q", "-sS", "-v", "-g", "--connect-timeout", "10", "--max-time", fmt.Sprint(int(timeout.Seconds())), "-o", out}
		switch c.mode {
		case "pasv":
			args = append(args, curlPASV...)
		case "epsv":
			args = append(args, curlEPSV...)
		case "port":
			args = append(args, curlPORT...)
		case "eprt":
			args = append(args, curlEPRT...)
		}
		args = append(args, ftpURL(host, tg.port, file))
		_, stderr, err := execIn(t, timeout, tg.ns, nil, "curl", args...)
		res.trace = string(stderr)
		if err != nil {
			t.Fatalf("curl %s: %v\n%s", strings.Join(args, " "), err, res.trace)
		}
		res.sha256, res.bytes = fileResult(t, out)

	case "lftp":
		script := lftpScript(c.mode, ftpURL(host, tg.port, ""), file, out)
		home := filepath.Join(dir, "home")
		if err := os.Mkdir(home, 0o755); err != nil {
			t.Fatal(err)
		}
		stdout, stderr, err := execIn(t, timeout, tg.ns, []string{"HOME=" + home}, "lftp", "-d", "-c", script)
		res.trace = string(stdout) + string(stderr)
		if err != nil {
			t.Fatalf("lftp -c %q: %v\n%s", script, err, res.trace)
		}
		res.sha256, res.bytes = fileResult(t, out)

	case "python":
		mode := "pasv"
		if c.mode == "port" || c.mode == "eprt" {
			mode = "active"
		}
		stdout, stderr, err := execIn(t, timeout, tg.ns, nil, "python3", harness.pyScript, host, file, mode, fmt.Sprint(tg.ctlPort()))
		res.trace = string(stderr)
		if err != nil {
			t.Fatalf("python ftplib (%s): %v\n%s%s", mode, err, stdout, res.trace)
		}
		var r struct {
			Bytes   int    `json:"bytes"`
			SHA256  string `json:"sha256"`
			Content string `json:"content"`
		}
		if err := json.Unmarshal(stdout, &r); err != nil {
			t.Fatalf("python output %q: %v", stdout, err)
		}
		res.sha256, res.bytes, res.content = r.SHA256, r.Bytes, r.Content

	case "go":
		rs := runFtpget(t, tg.ns, net.JoinHostPort(host, fmt.Sprint(tg.ctlPort())), c.mode, file, 1)
		r := rs.results[0]
		res.trace = rs.trace
		res.sha256, res.bytes, res.content, res.dataPeer = r.SHA256, r.Bytes, r.Content, r.DataPeer

	default:
		t.Fatalf("unknown tool %q", c.tool)
	}
	return res
}

// The exact client settings of each data mode.
var (
	curlPASV = []string{"--ftp-pasv", "--disable-epsv", "--no-ftp-skip-pasv-ip"}
	curlEPSV = []string{"--ftp-pasv"} // EPSV is curl's first choice
	curlPORT = []string{"-P", "-", "--disable-eprt"}
	curlEPRT = []string{"-P", "-"} // EPRT is curl's first choice
)

// lftpScript returns the lftp -c script for one download. lftp 4.9 has no
// switch for EPRT: it sends PORT for an IPv4 and EPRT for an IPv6 data
// address, and EPSV always for IPv6. ftp:fix-pasv-address would silently
// replace an unrewritten private 227 address, so it is off.
func lftpScript(mode, url, file, out string) string {
	settings := []string{
		"set cmd:fail-exit yes",
		"set net:max-retries 1",
		"set net:timeout 20",
		"set net:reconnect-interval-base 1",
		"set ftp:ssl-allow no",
		"set ftp:fix-pasv-address no",
		"set ftp:ignore-pasv-address no",
		"set ftp:port-ipv4 \"\"",
		"set xfer:clobber yes",
	}
	switch mode {
	case "pasv":
		settings = append(settings, "set ftp:passive-mode on", "set ftp:prefer-epsv no")
	case "epsv":
		settings = append(settings, "set ftp:passive-mode on", "set ftp:prefer-epsv yes")
	default:
		settings = append(settings, "set ftp:passive-mode off")
	}
	settings = append(settings, "open "+url, fmt.Sprintf("get %s -o %s", file, out), "quit")
	return strings.Join(settings, "; ")
}

func fileResult(t *testing.T, path string) (string, int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("downloaded file: %v", err)
	}
	return sha256Hex(b), len(b)
}

// checkTrace asserts from a client's protocol trace that it sent the data
// command under test and not its fallback, and that a 227 reply carried the
// expected address.
func checkTrace(t *testing.T, tg target, c mcase, trace string) {
	t.Helper()
	prefix := map[string]string{"curl": "> ", "lftp": "---> ", "python": "*cmd* '", "go": "> "}[c.tool]
	cmd := strings.ToUpper(c.mode)
	other := map[string]string{"PASV": "EPSV", "EPSV": "PASV", "PORT": "EPRT", "EPRT": "PORT"}[cmd]
	if !strings.Contains(trace, prefix+cmd) {
		t.Errorf("%s did not send %s; trace:\n%s", c.tool, cmd, trace)
	}
	if strings.Contains(trace, prefix+other) {
		t.Errorf("%s sent %s (fallback?) while %s was under test; trace:\n%s", c.tool, other, cmd, trace)
	}
	if cmd == "PASV" {
		want := strings.ReplaceAll(tg.pasv4, ".", ",") + ","
		if !strings.Contains(trace, "227 ") || !strings.Contains(trace, want) {
			t.Errorf("no 227 reply with address %s in trace:\n%s", tg.pasv4, trace)
		}
	}
}

type ftpgetResult struct {
	I            int    `json:"i"`
	File         string `json:"file"`
	Bytes        int    `json:"bytes"`
	SHA256       string `json:"sha256"`
	DataPeer     string `json:"data_peer"`
	PassiveReply string `json:"passive_reply"`
	Content      string `json:"content"`
	Control      string `json:"control"`
}

type ftpgetRun struct {
	results []ftpgetResult
	trace   string
}

// runFtpget runs the Go client in ns: n transfers cycling through files (a
// comma-separated list) on one control connection.
func runFtpget(t *testing.T, ns, addr, mode, files string, n int, extra ...string) ftpgetRun {
	t.Helper()
	stdout, stderr, err := execIn(t, 5*time.Minute, ns, nil, harness.ftpget,
		append([]string{"-addr", addr, "-mode", mode, "-files", files, "-n", fmt.Sprint(n), "-trace"}, extra...)...)
	run := ftpgetRun{trace: string(stderr)}
	for _, line := range strings.Split(strings.TrimSpace(string(stdout)), "\n") {
		if line == "" {
			continue
		}
		var r ftpgetResult
		if jerr := json.Unmarshal([]byte(line), &r); jerr != nil {
			t.Fatalf("ftpget output %q: %v", line, jerr)
		}
		run.results = append(run.results, r)
	}
	if err != nil {
		t.Fatalf("ftpget -addr %s -mode %s: %v after %d transfers\n%s", addr, mode, err, len(run.results), tailString(run.trace, 8000))
	}
	if len(run.results) != n {
		t.Fatalf("ftpget made %d transfers, want %d", len(run.results), n)
	}
	return run
}
