package ctl

import (
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// WriteStatus prints a status as nfhelperctl status does.
func WriteStatus(w io.Writer, s *Status) {
	fmt.Fprintf(w, "nfhelperd pid %d, up %s (since %s)\n", s.Pid, time.Duration(s.UptimeSeconds)*time.Second, s.Started.Format(time.RFC3339))
	last := int(s.Queues.First) + int(s.Queues.Count) - 1
	rows := [][2]string{
		{"datapath", s.Datapath},
		{"queues", fmt.Sprintf("%d-%d (%d)", s.Queues.First, last, s.Queues.Count)},
		{"config", s.Config},
		{"table", s.Table},
		{"services", fmt.Sprint(s.Services)},
		{"helpers", fmt.Sprint(s.Helpers)},
		{"connections", fmt.Sprintf("%d (tcp %d, udp %d)", s.Connections, s.TCP, s.UDP)},
	}
	if s.VRRP != nil {
		rows = append(rows, [2]string{"vrrp", vrrpLine(s.VRRP)})
	}
	reload := fmt.Sprint(s.Reloads)
	if r := s.LastReload; r != nil {
		res := "ok"
		if r.Error != "" {
			res = "failed: " + r.Error
		}
		reload += fmt.Sprintf(" (last %s: %s)", r.Time.Format(time.RFC3339), res)
	}
	rows = append(rows, [2]string{"reloads", reload})
	for _, r := range rows {
		fmt.Fprintf(w, "%-12s %s\n", r[0]+":", r[1])
	}
	fmt.Fprintln(w, "counters:")
	seen := map[string]bool{}
	for _, n := range StatNames {
		if v, ok := s.Stats[n]; ok {
			fmt.Fprintf(w, "  %-22s %d\n", n, v)
			seen[n] = true
		}
	}
	// Counters a newer daemon has and this client does not know.
	for n, v := range s.Stats {
		if !seen[n] {
			fmt.Fprintf(w, "  %-22s %d\n", n, v)
		}
	}
	writeHelperStats(w, s.HelperStats)
}

const helperLine = "  %-12s %9v %9v %9v %9v %7v %9v\n"

// writeHelperStats prints each helper's counters, one a line, helpers
// sorted; refusals are summed over their reasons (status --json has each).
// A daemon that predates them sent none: nothing is printed.
func writeHelperStats(w io.Writer, helpers map[string]map[string]uint64) {
	if len(helpers) == 0 {
		return
	}
	fmt.Fprintln(w, "per helper:")
	fmt.Fprintf(w, helperLine, "helper", "sessions", "channels", "used", "rewritten", "errors", "refusals")
	for _, name := range slices.Sorted(maps.Keys(helpers)) {
		c := helpers[name]
		var refusals uint64
		for n, v := range c {
			if strings.HasPrefix(n, "refused_") {
				refusals += v
			}
		}
		fmt.Fprintf(w, helperLine, name, c["sessions"], c["channels_opened"], c["channels_used"], c["rewritten"], c["errors"], refusals)
	}
}

const serverLine = "  -> %-26s %-6v %-10v %-9v %-9v %-11v %v\n"

// WriteServices prints services as ipvsadm -Ln does, with counters.
func WriteServices(w io.Writer, s *Services) {
	fmt.Fprintln(w, "Prot LocalAddress:Port Scheduler Flags")
	fmt.Fprintf(w, serverLine, "RemoteAddress:Port", "Weight", "ActiveConn", "InActConn", "Conns", "Packets", "Bytes")
	fmt.Fprintln(w, "     State (down: no new connections); health (check) since; last failure (cause); overrides")
	kernelWarning(w, s.KernelError, "counts")
	for _, svc := range s.Services {
		flags := []string{svc.Scheduler}
		if p := svc.Persistence; p != nil {
			flags = append(flags, fmt.Sprintf("persistent %d", p.TimeoutSeconds))
			if p.Prefix4 != 32 || p.Prefix6 != 128 {
				flags = append(flags, fmt.Sprintf("mask /%d /%d", p.Prefix4, p.Prefix6))
			}
		}
		if svc.Helper != "" {
			flags = append(flags, "helper "+svc.Helper)
		}
		name := svc.Name
		if svc.ScheduledBy != "" {
			name += ", " + svc.ScheduledBy + "-scheduled"
		}
		fmt.Fprintf(w, "%-4s %s %s  # %s\n", svc.Protocol, svc.VIP, strings.Join(flags, " "), name)
		writeServers(w, svc.Servers)
	}
	if len(s.Helpers) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Add-on helpers")
	fmt.Fprintln(w, "Prot Match:Port Helper")
	fmt.Fprintf(w, serverLine, "LearnedServer:Port", "Weight", "ActiveConn", "InActConn", "Conns", "Packets", "Bytes")
	for _, h := range s.Helpers {
		fmt.Fprintf(w, "%-4s %s helper %s  # %s\n", h.Protocol, h.Match, h.Helper, h.Name)
		writeServers(w, h.Servers)
	}
}

// kernelWarning says that kernel-scheduled services' what could not be
// read from the kernel.
func kernelWarning(w io.Writer, err, what string) {
	if err != "" {
		fmt.Fprintf(w, "warning: kernel-scheduled services' %s not read: %s\n", what, err)
	}
}

func writeServers(w io.Writer, servers []RealServer) {
	for _, rs := range servers {
		fmt.Fprintf(w, serverLine, rs.Address, rs.Weight, rs.Active, rs.Inactive, rs.Conns, rs.Packets, rs.Bytes)
		if d := standingText(&rs); d != "" {
			fmt.Fprintf(w, "     %s\n", d)
		}
	}
}

// standingText is a configured server's state, health and overrides, the
// parts it has separated by "; ", or "" for a learned server.
func standingText(rs *RealServer) string {
	if rs.State == "" {
		return ""
	}
	var parts []string
	if rs.Sorry {
		parts = append(parts, "sorry server")
	}
	parts = append(parts, "state "+rs.State)
	if rs.Health != "" {
		h := fmt.Sprintf("health %s (%s)", rs.Health, rs.Check)
		if !rs.Since.IsZero() {
			h += " since " + rs.Since.Format(time.RFC3339)
		}
		parts = append(parts, h)
	}
	if !rs.LastFailure.IsZero() {
		parts = append(parts, fmt.Sprintf("last failure %s (%s)", rs.LastFailure.Format(time.RFC3339), rs.LastCause))
	}
	if o := rs.Override; o != nil && (o.Weight != nil || o.Drained || o.Down) {
		var set []string
		if o.Weight != nil {
			set = append(set, fmt.Sprintf("weight %d", *o.Weight))
		}
		if o.Drained {
			set = append(set, "drained")
		}
		if o.Down {
			set = append(set, "down")
		}
		ov := "override " + strings.Join(set, ", ")
		if rs.ConfigWeight != nil {
			ov += fmt.Sprintf(" (file weight %d)", *rs.ConfigWeight)
		}
		parts = append(parts, ov)
	}
	return strings.Join(parts, "; ")
}

// WriteServer prints one real server of service, as nfhelperctl server
// does after a change.
func WriteServer(w io.Writer, service string, rs *RealServer) {
	fmt.Fprintf(w, "%s %s: weight %d, %s (%d active, %d inactive)\n",
		service, rs.Address, rs.Weight, Count(rs.Connections(), "connection"), rs.Active, rs.Inactive)
	if d := standingText(rs); d != "" {
		fmt.Fprintf(w, "  %s\n", d)
	}
}

// Count is n things: "1 connection", "2 connections".
func Count[N int | int64](n N, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}

// expire prints seconds as ipvsadm does: mm:ss.
func expire(sec int64) string { return fmt.Sprintf("%02d:%02d", sec/60, sec%60) }

const connLine = "%-3s %-6s %-11s %-24s %-24s %-24s %-24s %s\n"

// WriteConns prints the connection table as ipvsadm -Lnc does, with each
// helped connection's announced data channels below it.
func WriteConns(w io.Writer, cs *Conns) {
	fmt.Fprintf(w, connLine, "pro", "expire", "state", "source", "virtual", "destination", "client-nat", "service")
	kernelWarning(w, cs.KernelError, "connections")
	for _, c := range cs.Conns {
		nat := "-"
		if c.ClientNAT.IsValid() {
			nat = c.ClientNAT.String()
		}
		svc := c.Service
		if c.Helper != "" {
			svc += " (" + c.Helper + ")"
		}
		fmt.Fprintf(w, connLine, c.Protocol, expire(c.ExpiresIn), c.State, c.Client, c.VIP, c.Server, nat, svc)
		if c.About != "" {
			fmt.Fprintf(w, "    `- %s\n", c.About)
		}
		for _, r := range c.Replies {
			fmt.Fprintf(w, "    `- reply %s -> %s as %s, %ds\n", r.Server, c.Client, r.VIP, r.AgeSeconds)
		}
		for _, ch := range c.Channels {
			fmt.Fprintf(w, "    `- %s\n", channelText(ch))
		}
	}
}

func anyPort(a netip.AddrPort) string {
	if a.Port() != 0 {
		return a.String()
	}
	if a.Addr().Is6() {
		return "[" + a.Addr().String() + "]:*"
	}
	return a.Addr().String() + ":*"
}

func channelText(ch Channel) string {
	var s string
	switch ch.Kind {
	case "passive":
		s = fmt.Sprintf("passive %s -> %s => %s", anyPort(ch.Client), ch.VIP, ch.Server)
		if ch.NAT.IsValid() {
			s += fmt.Sprintf(" (from %s)", ch.NAT.Addr())
		}
	case "active":
		s = fmt.Sprintf("active  %s -> %s", anyPort(ch.Server), ch.Client)
		if ch.NAT.IsValid() {
			s = fmt.Sprintf("active  %s -> %s => %s", anyPort(ch.Server), ch.NAT, ch.Client)
		}
		s += fmt.Sprintf(" (source %s)", ch.VIP.Addr())
	default:
		s = fmt.Sprintf("%s %s", ch.Kind, anyPort(ch.Server))
	}
	return fmt.Sprintf("%s expire %s", s, expire(ch.ExpiresIn))
}

// WriteCheck prints check results, one a line.
func WriteCheck(w io.Writer, r *CheckReport) {
	for _, c := range r.Checks {
		fmt.Fprintf(w, "%-5s %-17s %s\n", strings.ToUpper(c.Status), c.Name, c.Detail)
	}
}

// WriteRules prints the table listing.
func WriteRules(w io.Writer, r *Rules) {
	io.WriteString(w, r.Text)
	if !strings.HasSuffix(r.Text, "\n") {
		io.WriteString(w, "\n")
	}
}
