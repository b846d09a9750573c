package main

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/nfhelper/nfhelper/integration/bench/measure"
)

func quant(v []time.Duration, q float64) time.Duration {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// mm is "median (min–max)" with the given format.
func mm(v []float64, f string) string {
	if len(v) == 0 {
		return "–"
	}
	if len(v) == 1 {
		return fmt.Sprintf(f, v[0])
	}
	return fmt.Sprintf(f+" ("+f+"–"+f+")", measure.Median(v), slices.Min(v), slices.Max(v))
}

// spread is measure.Spread as a column: "–" for fewer than two rounds.
func spread(v []float64) string {
	if len(v) < 2 || measure.Median(v) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f %%", measure.Spread(v))
}

func (b *bench) command() string {
	return fmt.Sprintf("go run ./integration/bench/ftpbench -rounds %d -duration %v -warmup %v -workers %d -bigsize %d -rtt %d -conns '%s'",
		b.o.rounds, b.o.duration, b.o.warmup, b.o.workers, b.o.bigSize, b.o.rtt, b.o.conns)
}

// report is the Markdown of the results: one section per measure, then
// every round's raw figures.
func (b *bench) report(samples []*sample, mem *memResult, took time.Duration) string {
	rep := &reporter{b: b, samples: samples}
	rep.header(took)
	rep.sessions()
	rep.packets()
	rep.throughput()
	rep.latency()
	rep.memory(mem)
	rep.perRound()
	return rep.w.String()
}

// reporter writes the report's sections.
type reporter struct {
	b       *bench
	samples []*sample
	w       strings.Builder
}

func (rep *reporter) p(format string, args ...any) { fmt.Fprintf(&rep.w, format, args...) }

// by is the samples of the system with key.
func (rep *reporter) by(key string) []*sample {
	var out []*sample
	for _, s := range rep.samples {
		if systems[s.sys].key == key {
			out = append(out, s)
		}
	}
	return out
}

// vals is f of the samples that have it.
func vals(ss []*sample, f func(*sample) (float64, bool)) []float64 {
	var v []float64
	for _, s := range ss {
		if x, ok := f(s); ok {
			v = append(v, x)
		}
	}
	return v
}

// ratio is, per round, f of system a over f of system c.
func (rep *reporter) ratio(a, c string, f func(*sample) (float64, bool)) []float64 {
	// of is f of the round's sample of the system with key (the last one).
	of := func(key string) func(int) (float64, bool) {
		return func(r int) (x float64, ok bool) {
			for _, s := range rep.samples {
				if s.round == r && systems[s.sys].key == key {
					x, ok = f(s)
				}
			}
			return x, ok
		}
	}
	return measure.Ratios(rep.b.o.rounds, of(a), of(c))
}

func (rep *reporter) header(took time.Duration) {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	la, _ := os.ReadFile("/proc/loadavg")
	rep.p("Run %s, %v, kernel %s, %d CPUs, Go %s; load average at the end: %s.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), took.Round(time.Second), strings.TrimSpace(string(kernel)),
		runtime.NumCPU(), runtime.Version(), strings.TrimSpace(string(la)))
	rep.p("Command (as root, from the module root; `make bench-ftp` runs it with these defaults):\n\n    %s\n\n", rep.b.command())
}

func (rep *reporter) sessions() {
	// Sessions.
	rate := func(s *sample) (float64, bool) {
		if s.sess == nil {
			return 0, false
		}
		return s.sess.Rate, true
	}
	rep.p("#### FTP sessions per second\n\n")
	rep.p("%d concurrent sessions (ftpload, client namespace), each: connect to %s:21, anonymous login, PASV, RETR small.bin (4 KiB), QUIT; %v measured after %v warm-up, per system and round; %d rounds, systems alternating within each round.\n\n",
		rep.b.o.workers, "198.51.100.10", rep.b.o.duration, rep.b.o.warmup, rep.b.o.rounds)
	rep.p("| system | sessions/s median (min–max) | spread | session p50 ms | session p99 ms | failed sessions | ÷ kernel helper, per round: median (min–max) | machine CPU µs/session | of which softirq |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, sys := range systems {
		if !sys.sessions {
			continue
		}
		ss := rep.by(sys.key)
		var fails int64
		for _, s := range ss {
			if s.sess != nil {
				fails += s.sess.Failures
			}
		}
		r := "1"
		if sys.key != "kernel" {
			r = mm(rep.ratio(sys.key, "kernel", rate), "%.2f")
		}
		rep.p("| %s | %s | %s | %s | %s | %d | %s | %s | %s |\n", sys.name, mm(vals(ss, rate), "%.0f"), spread(vals(ss, rate)),
			mm(vals(ss, func(s *sample) (float64, bool) { return sessF(s, func(r *sessRes) float64 { return r.P50 }) }), "%.1f"),
			mm(vals(ss, func(s *sample) (float64, bool) { return sessF(s, func(r *sessRes) float64 { return r.P99 }) }), "%.1f"),
			fails, r, mm(vals(ss, perSession(func(s *sample) float64 { return s.hostCPU * 1e6 })), "%.0f"),
			mm(vals(ss, perSession(func(s *sample) float64 { return s.softirq * 1e6 })), "%.0f"))
	}
	rep.p("\nMachine CPU: busy time of all CPUs (/proc/stat) over the measured run ÷ completed sessions, and its softirq part, where the router's forwarding, NAT and FTP helpers run (the client's and servers' network stacks too: every namespace shares the machine, and so does other work on it).\n\n")
	for _, key := range []string{"nfhelperd", "nfhelperd-lc"} {
		cpu := vals(rep.by(key), perSession(func(s *sample) float64 { return s.daemonCPU * 1e6 }))
		rep.p("%s: CPU time per session (utime+stime of its process over the measured run ÷ completed sessions, 10 ms clock): **%s µs**.\n\n", sysName(key), mm(cpu, "%.0f"))
	}

}

func (rep *reporter) packets() {
	nf := rep.by("nfhelperd")
	queued := perSession(func(s *sample) float64 { return float64(s.queued) })
	pkts := vals(nf, queued)
	pktsLC := vals(rep.by("nfhelperd-lc"), queued)

	c2s := vals(nf, func(s *sample) (float64, bool) {
		if s.sess == nil || s.sess.Sessions == 0 || s.ctrlC2S == 0 {
			return 0, false
		}
		return float64(s.ctrlC2S) / float64(s.sess.Sessions), true
	})
	s2c := vals(nf, func(s *sample) (float64, bool) {
		if s.sess == nil || s.sess.Sessions == 0 || s.ctrlS2C == 0 {
			return 0, false
		}
		return float64(s.ctrlS2C) / float64(s.sess.Sessions), true
	})
	rep.p("#### Packets per FTP session that reach userspace\n\n")
	rep.p("Packets the router's kernel queued to nfhelperd during the measured session runs (sum of `id_sequence` over its queues in `/proc/net/netfilter/nfnetlink_queue`) ÷ completed sessions, median (min–max) over rounds:\n\n")
	rep.p("| per session | packets |\n|---|---|\n")
	rep.p("| queued to nfhelperd, rr: scheduled in the kernel (both directions) | **%s** |\n", mm(pkts, "%.1f"))
	rep.p("| queued to nfhelperd, lc: scheduled by the daemon (both directions) | %s |\n", mm(pktsLC, "%.1f"))
	rep.p("| control-connection packets forwarded client → server (nft counter, `meta l4proto tcp ct original proto-dst 21 ct direction original`) | %s |\n", mm(c2s, "%.1f"))
	rep.p("| control-connection packets forwarded server → client (`ct direction reply`) | %s |\n\n", mm(s2c, "%.1f"))
	rep.p("The queue's count is not split by direction; the forwarded control packets are (a separate counting table in the router during the same runs). Sessions cut off at the end of a run are not counted but their packets are, which inflates these figures slightly (at most %d sessions' worth per run).\n\n", rep.b.o.workers)

}

func (rep *reporter) throughput() {
	tput := func(s *sample) (float64, bool) { return s.mbps, s.mbps > 0 }
	rep.p("#### Data-channel throughput\n\n")
	rep.p("One passive RETR of a sparse file of %d MiB (served by vsftpd, read into io.Discard by the bench in the client namespace), per system and round; MB/s = 10^6 bytes/s from the RETR to the end of the data.\n\n", rep.b.o.bigSize>>20)
	rep.p("| system | MB/s median (min–max) | spread | ÷ plain DNAT, per round |\n|---|---|---|---|\n")
	for _, sys := range systems {
		if sys.sessionsOnly {
			continue
		}
		ss := rep.by(sys.key)
		r := "1"
		if sys.key != "dnat" {
			r = mm(rep.ratio(sys.key, "dnat", tput), "%.2f")
		}
		rep.p("| %s | %s | %s | %s |\n", sys.name, mm(vals(ss, tput), "%.0f"), spread(vals(ss, tput)), r)
	}

}

func (rep *reporter) latency() {
	rep.p("\n#### Control-channel round trip\n\n")
	rep.p("One logged-in control connection per system and round, %d NOOP → 200 then %d PASV → 227 round trips back to back (after 20 unmeasured NOOPs); per-round p50/p99, then median (min–max) over rounds, in µs.\n\n", rep.b.o.rtt, rep.b.o.rtt)
	rep.p("| system | NOOP p50 | NOOP p99 | PASV p50 | PASV p99 | PASV p50 − plain DNAT's, per round |\n|---|---|---|---|---|---|\n")
	q := func(pick func(*sample) []time.Duration, qq float64) func(*sample) (float64, bool) {
		return func(s *sample) (float64, bool) {
			v := pick(s)
			return us(quant(v, qq)), len(v) > 0
		}
	}
	noop := func(s *sample) []time.Duration { return s.noop }
	pasv := func(s *sample) []time.Duration { return s.pasv }
	for _, sys := range systems {
		if sys.sessionsOnly {
			continue
		}
		ss := rep.by(sys.key)
		diff := "–"
		if sys.key != "dnat" {
			var d []float64
			for r := 1; r <= rep.b.o.rounds; r++ {
				var x, y float64
				var okx, oky bool
				for _, s := range rep.samples {
					if s.round == r && systems[s.sys].key == sys.key {
						x, okx = q(pasv, .5)(s)
					}
					if s.round == r && systems[s.sys].key == "dnat" {
						y, oky = q(pasv, .5)(s)
					}
				}
				if okx && oky {
					d = append(d, x-y)
				}
			}
			diff = mm(d, "%+.0f")
		}
		rep.p("| %s | %s | %s | %s | %s | %s |\n", sys.name,
			mm(vals(ss, q(noop, .5)), "%.0f"), mm(vals(ss, q(noop, .99)), "%.0f"),
			mm(vals(ss, q(pasv, .5)), "%.0f"), mm(vals(ss, q(pasv, .99)), "%.0f"), diff)
	}

}

func (rep *reporter) memory(mem *memResult) {
	nf := rep.by("nfhelperd")
	rep.p("\n#### Memory\n\n")
	idle := vals(nf, func(s *sample) (float64, bool) { return float64(s.rssIdle), s.rssIdle > 0 })
	after := vals(nf, func(s *sample) (float64, bool) { return float64(s.rssAfter), s.rssAfter > 0 })
	rep.p("nfhelperd RSS (VmRSS) right after start: %s kB; after the round's round trips, throughput and session runs: %s kB.\n\n", mm(idle, "%.0f"), mm(after, "%.0f"))
	if mem != nil {
		rep.p("Connections held open through the VIP to a plain TCP service (%s:%d, rr over rs1/rs2, no helper), held by dialer processes in the client namespace (%d connections each, each from its own source address 203.0.113.10+; 16 dialing goroutines each); the real servers never accept them (they wait established in listen backlogs of 65535, so no file descriptor limit applies on their side); a fresh daemon, one run:\n\n", "198.51.100.10", holdPort, perDialer)
		rep.p("| connections open | daemon's table (`status` connections) | nfhelperd RSS kB | RSS growth per connection (bytes) | time to open |\n|---|---|---|---|---|\n")
		var base int64
		for i, pt := range mem.points {
			if i == 0 {
				base = pt.rssKB
				rep.p("| 0 | %d | %d | – | – |\n", pt.tracked, pt.rssKB)
				continue
			}
			per := float64(pt.rssKB-base) * 1024 / float64(max(pt.open, 1))
			rep.p("| %d | %d | %d | %.0f | %v |\n", pt.open, pt.tracked, pt.rssKB, per, pt.took.Round(100*time.Millisecond))
		}
		if mem.err != "" {
			rep.p("\nIncomplete: %s\n", mem.err)
		}
	}

}

// perRound is every round's figures and errors.
func (rep *reporter) perRound() {
	rep.p("\n#### Per round\n\n| round | system | sessions/s | daemon CPU µs/session | queued pkts/session | MB/s | NOOP p50/p99 µs | PASV p50/p99 µs | errors |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range rep.samples {
		sr, cpuS, pk := "–", "–", "–"
		if s.sess != nil {
			sr = fmt.Sprintf("%.0f", s.sess.Rate)
			if isDaemon(systems[s.sys].key) && s.sess.Sessions > 0 {
				cpuS = fmt.Sprintf("%.0f", s.daemonCPU/float64(s.sess.Sessions)*1e6)
				pk = fmt.Sprintf("%.1f", float64(s.queued)/float64(s.sess.Sessions))
			}
			if s.sess.Failures > 0 {
				s.err = append(s.err, fmt.Sprintf("%d failed sessions %v", s.sess.Failures, s.sess.Errors))
			}
		}
		rep.p("| %d | %s | %s | %s | %s | %.0f | %.0f / %.0f | %.0f / %.0f | %s |\n", s.round, systems[s.sys].key, sr, cpuS, pk, s.mbps,
			us(quant(s.noop, .5)), us(quant(s.noop, .99)), us(quant(s.pasv, .5)), us(quant(s.pasv, .99)), strings.Join(s.err, "; "))
	}
}

// perSession is f of a sample ÷ its completed sessions, for samples with
// sessions.
func perSession(f func(*sample) float64) func(*sample) (float64, bool) {
	return func(s *sample) (float64, bool) {
		if s.sess == nil || s.sess.Sessions == 0 {
			return 0, false
		}
		return f(s) / float64(s.sess.Sessions), true
	}
}

// sysName is the report's name of the system with key.
func sysName(key string) string {
	for _, s := range systems {
		if s.key == key {
			return s.name
		}
	}
	return key
}

func sessF(s *sample, f func(*sessRes) float64) (float64, bool) {
	if s.sess == nil {
		return 0, false
	}
	return f(s.sess), true
}
