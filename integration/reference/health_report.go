package main

import (
	"fmt"
	"strings"
)

// healthSection is the report's health comparison: a table of every
// measurement per system, a sentence per difference, each system's setup.
func (r *report) healthSection(b *strings.Builder) {
	fmt.Fprintf(b, "\n## Health checks: keepalived + IPVS vs nfhelperd\n\n"+
		"Three VIPs on the router, %s:21 (with a sorry server, hksorry), %s:21 (without) and %s:21 (a script check instead), "+
		"balanced round robin over vsftpd on hk1 and hk2; both systems check them with a TCP connect (or the script) every %v, down after %d failures in a row "+
		"(nfhelperd: also up only after %d passes). Meanwhile %d clients in the client namespace each start a session "+
		"through the first VIP every %v (log in, PASV, fetch server.txt, which names the server, quit). "+
		"The first server stops %v after the start, when every check has passed at least once. "+
		"Times count from the moment vsftpd was stopped or, for a start, from when it listened again; "+
		"\"taken out\" and \"back\" are what the balancer itself showed (IPVS's table in /proc/net/ip_vs, nfhelperd's "+
		"control socket as `nfhelperctl services` reads it), polled every 20 ms; a session's time is when it began to connect.\n\n",
		hcVIPSorry, hcVIPNoSorry, hcVIPExec, hcInterval, hcFall, hcRise, hcWorkers, hcEvery, hcWarm)
	res := r.health
	if len(res) > 0 {
		b.WriteString("| scenario |")
		for _, x := range res {
			fmt.Fprintf(b, " %s |", x.system)
		}
		b.WriteString("\n|---|")
		for range res {
			b.WriteString("---|")
		}
		b.WriteString("\n")
		row := func(label string, f func(*hcResult) string) {
			fmt.Fprintf(b, "| %s |", label)
			for _, x := range res {
				fmt.Fprintf(b, " %s |", strings.ReplaceAll(f(x), "|", "\\|"))
			}
			b.WriteString("\n")
		}
		row("1. vsftpd stops on hk2: taken out after", func(x *hcResult) string { return x.out.String() })
		row("1. the same, script check (MISC_CHECK, exec), third VIP: taken out after", func(x *hcResult) string { return x.outExec.String() })
		row("1. last failed session started after", func(x *hcResult) string {
			if x.failed == 0 {
				return "none failed"
			}
			return x.lastFailed.String()
		})
		row("1. failed sessions (of those started until 2 s after it was taken out)", func(x *hcResult) string {
			return fmt.Sprintf("%d of %d", x.failed, x.started)
		})
		row("1. of them started after it was taken out", func(x *hcResult) string { return fmt.Sprint(x.lateFailures) })
		row("2. vsftpd starts again: back after", func(x *hcResult) string { return x.back.String() })
		row("2. the same, script check, third VIP: back after", func(x *hcResult) string { return x.backExec.String() })
		row("2. first session it served started after", func(x *hcResult) string { return x.served.String() })
		row("3. every server down, sorry server: first session it served started after", func(x *hcResult) string { return x.sorry.String() })
		row("3. sessions failed until then", func(x *hcResult) string { return fmt.Sprint(x.sorryFailed) })
		row("3. every server down, no sorry server: a new connection", func(x *hcResult) string { return x.noSorry })
		row("4. drain", func(x *hcResult) string { return "`" + x.drainCmd + "`" })
		row("4. new sessions to it in the 2 s after the command returned", func(x *hcResult) string {
			return fmt.Sprintf("%d of %d", x.drainedNew, x.drainedTotal)
		})
		row("4. its session opened before, fetching a file after", func(x *hcResult) string { return x.held })
		fmt.Fprintf(b, "\nFailed sessions count against the number started: each client starts its next session when the last "+
			"ended or %v after the last began, whichever is later, so a system that serves faster, or refuses faster, starts more.\n\n", hcEvery)
		for _, x := range res {
			if x.err != "" {
				fmt.Fprintf(b, "- %s: the run stopped early: %s\n", x.system, x.err)
			}
			for _, p := range x.problems {
				fmt.Fprintf(b, "- %s: **FAIL**: %s\n", x.system, p)
			}
		}
	}
	for _, s := range r.healthSystems {
		fmt.Fprintf(b, "- %s: %s\n", s.name, s.config)
	}
	for name, why := range r.healthUnavailable {
		fmt.Fprintf(b, "- %s: not measured: %s\n", name, why)
	}
	if d := healthDifferences(res); len(d) > 0 {
		b.WriteString("\nDifferences:\n\n")
		for _, s := range d {
			fmt.Fprintf(b, "- %s\n", s)
		}
	}
}

// healthDifferences is a sentence per difference between keepalived's
// and nfhelperd's results, from what was measured.
func healthDifferences(res []*hcResult) []string {
	var k, n *hcResult
	for _, x := range res {
		switch x.system {
		case "keepalived + IPVS":
			k = x
		case "nfhelperd":
			n = x
		}
	}
	if k == nil || n == nil || k.err != "" || n.err != "" {
		return nil
	}
	var out, same []string
	// cmp says which is sooner when they differ by more than an
	// interval, else lists them as the same; except a server's return,
	// which differs by design (rise), said below.
	cmp := func(what string, a, b span) {
		if !a.ok || !b.ok {
			if a.ok != b.ok {
				out = append(out, fmt.Sprintf("%s: keepalived %v, nfhelperd %v.", what, a, b))
			}
			return
		}
		if d := a.d - b.d; d > hcInterval || d < -hcInterval {
			faster := "nfhelperd"
			if d < 0 {
				faster, d = "keepalived", -d
			}
			out = append(out, fmt.Sprintf("%s: %s is %.1f s sooner (keepalived %v, nfhelperd %v).", what, faster, d.Seconds(), a, b))
			return
		}
		if strings.Contains(what, "back") {
			return
		}
		same = append(same, fmt.Sprintf("%s (%v, %v)", strings.ToLower(what[:1])+what[1:], a, b))
	}
	cmp("A stopped server is taken out", k.out, n.out)
	cmp("A stopped server is taken out by a script check", k.outExec, n.outExec)
	cmp("A server that starts again is back", k.back, n.back)
	cmp("A server that starts again is back by a script check", k.backExec, n.backExec)
	if k.back.ok && n.back.ok && n.back.d > k.back.d {
		out = append(out, fmt.Sprintf("keepalived's TCP_CHECK and MISC_CHECK have no rise: one passing check puts a server back; "+
			"nfhelperd waits for rise=%d passes in a row, so a flapping server is kept out, at the price of about one interval more.", hcRise))
	}
	cmp("The sorry server takes over", k.sorry, n.sorry)
	if how := func(s string) string { s, _, _ = strings.Cut(s, " after "); return s }; how(k.noSorry) != how(n.noSorry) {
		out = append(out, fmt.Sprintf("With every server down and no sorry server, a new connection is %s through keepalived + IPVS "+
			"and %s through nfhelperd.", k.noSorry, n.noSorry))
	}
	if k.drainedNew != n.drainedNew || k.held != n.held {
		out = append(out, fmt.Sprintf("Drain: keepalived + IPVS sent %d new sessions to the drained server and its open session %s; "+
			"nfhelperd %d and %s.", k.drainedNew, k.held, n.drainedNew, n.held))
	}
	if len(same) > 0 {
		out = append(out, fmt.Sprintf("Within one check interval (%v) of each other, keepalived's first: %s. "+
			"Each is one measurement, and where a stop or start falls in the checks' cycle moves it by up to one interval, "+
			"so these are not differences between the systems.", hcInterval, strings.Join(same, "; ")))
	}
	out = append(out, "A drain by `ipvsadm -e -w 0` is made behind keepalived's back: nothing records it, and no tool shows it as a drain; "+
		"nfhelperd's drain is an override that `nfhelperctl services` shows and that survives a reload and a restart until `undrain`.")
	return out
}
