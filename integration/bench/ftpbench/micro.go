package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// microRow is one sub-benchmark of ipvs.BenchmarkProcess over -count runs.
type microRow struct {
	name          string
	ns            []float64
	bytes, allocs []float64
}

type micro struct {
	rows   []*microRow
	memory []string // TestTableMemory's lines
	err    string
}

const (
	microCmd = "go test -run '^$' -bench '^BenchmarkProcess$' -benchmem -count 5 ./ipvs"
	tableCmd = "NFH_TABLE_MEM=1 go test -count 1 -run '^TestTableMemory$' -v ./ipvs"
)

var (
	benchRE = regexp.MustCompile(`^BenchmarkProcess/(\S+?)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op.*?\s([\d.]+) B/op\s+([\d.]+) allocs/op`)
	memRE   = regexp.MustCompile(`table-memory conns=(\d+) helped=(\w+) heap_bytes=\d+ bytes_per_conn=(\d+)`)
)

// runMicro runs the per-packet micro-benchmark and the table's memory test
// before the topology exists (nothing else of ours running).
func runMicro(ctx context.Context) *micro {
	m := &micro{}
	logf("running %s", microCmd)
	out, err := shell(ctx, microCmd)
	if err != nil {
		m.err = err.Error()
		return m
	}
	byName := map[string]*microRow{}
	for _, line := range strings.Split(out, "\n") {
		g := benchRE.FindStringSubmatch(strings.TrimSpace(line))
		if g == nil {
			continue
		}
		r := byName[g[1]]
		if r == nil {
			r = &microRow{name: g[1]}
			byName[g[1]] = r
			m.rows = append(m.rows, r)
		}
		ns, _ := strconv.ParseFloat(g[2], 64)
		bt, _ := strconv.ParseFloat(g[3], 64)
		al, _ := strconv.ParseFloat(g[4], 64)
		r.ns, r.bytes, r.allocs = append(r.ns, ns), append(r.bytes, bt), append(r.allocs, al)
	}
	logf("running %s", tableCmd)
	out, err = shell(ctx, tableCmd)
	if err != nil {
		m.err = err.Error()
		return m
	}
	for _, line := range strings.Split(out, "\n") {
		if g := memRE.FindStringSubmatch(line); g != nil {
			m.memory = append(m.memory, fmt.Sprintf("| %s | %s | %s |", g[1], map[string]string{"true": "helped (FTP)", "false": "not helped"}[g[2]], g[3]))
		}
	}
	return m
}

func shell(ctx context.Context, cmd string) (string, error) {
	c := exec.CommandContext(ctx, "sh", "-c", cmd)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	c.Env = os.Environ()
	if err := c.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", cmd, err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

var microWhat = map[string]string{
	"plain":        "plain control packet: client ACK on a connection nothing was rewritten on",
	"ack":          "seq-corrected packet: client ACK after a rewritten 227, ack number shifted",
	"rewritten227": "rewritten 227 (the recorded rewrite replayed for a resent copy; checksums redone)",
	"ackSACK":      "seq-corrected ACK with a SACK block (ack and SACK edges shifted)",
	"unknown":      "packet of no known connection (lookup miss)",
}

func (m *micro) markdown() string {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	p("#### Per-packet verdict path (micro)\n\n")
	p("`ipvs.Worker.Process` on one packet (parse, connection lookup, FTP helper, rewrite, checksums), no queue I/O; 5 runs of `go test -bench`, median (min–max):\n\n    %s\n\n", microCmd)
	if m.err != "" {
		p("Failed: %s\n\n", m.err)
	}
	p("| packet | ns/packet | B/op | allocs/op |\n|---|---|---|---|\n")
	for _, r := range m.rows {
		what := microWhat[r.name]
		if what == "" {
			what = r.name
		}
		p("| `%s`: %s | %s | %s | %s |\n", r.name, what, mm(r.ns, "%.0f"), mm(r.bytes, "%.0f"), mm(r.allocs, "%.0f"))
	}
	p("\nThe queue I/O around it (package `nfq`, recvmmsg and batched verdicts) costs about 1 µs per packet more, see *Queue path* below.\n\n")
	if len(m.memory) > 0 {
		p("Go heap of the daemon's connection table (package `ipvs`, in-process, after GC), for the memory figures below:\n\n    %s\n\n", tableCmd)
		p("| connections | kind | heap bytes per connection |\n|---|---|---|\n%s\n\n", strings.Join(m.memory, "\n"))
	}
	return w.String()
}
