package metrics

import (
	"errors"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nfhelper/nfhelper/health"
	"github.com/nfhelper/nfhelper/ipvs"
	"github.com/nfhelper/nfhelper/nfq"
	"github.com/nfhelper/nfhelper/vrrp"
)

// collector reads every nfhelper_* family at scrape time into const
// metrics: the engine's counters by ipvs's registry, the queues', the
// verdict counts and latency Metrics keeps, the services' and real servers'.
type collector struct{ m *Metrics }

var (
	queuePacketsDesc = prometheus.NewDesc("nfhelper_queue_packets_total",
		"Packets read from each NFQUEUE and given a verdict.", []string{"queue"}, nil)
	verdictsDesc = prometheus.NewDesc("nfhelper_verdicts_total",
		"Verdicts by queue and kind: drop; modify (new bytes: rewrite or seq/ack correction); mark (scheduling decision); accept (unchanged).",
		[]string{"queue", "verdict"}, nil)
	latencyDesc = prometheus.NewDesc("nfhelper_verdict_duration_seconds",
		"Time from reading a packet to its verdict.", nil, nil)
	connectionsDesc = prometheus.NewDesc("nfhelper_connections",
		"Connections (tcp) and flows (udp) in the table.", []string{"proto"}, nil)
	serviceInfoDesc = prometheus.NewDesc("nfhelper_service_info",
		"One series per running service: its VIP (or matched destination), protocol, mode, scheduler and helper.",
		[]string{"service", "vip", "proto", "mode", "scheduler", "helper"}, nil)
	serviceServersDesc = prometheus.NewDesc("nfhelper_service_real_servers",
		"Real servers of each service (learned ones for add-ons), not counting the sorry server.", []string{"service"}, nil)
	serviceActiveDesc = prometheus.NewDesc("nfhelper_service_active_connections",
		"Established connections of each service's real servers.", []string{"service"}, nil)
	serviceInactiveDesc = prometheus.NewDesc("nfhelper_service_inactive_connections",
		"Connections of each service's real servers in other states.", []string{"service"}, nil)
	kernelDroppedDesc = prometheus.NewDesc("nfhelper_queue_kernel_dropped_total",
		"Packets the kernel dropped because a queue was full (none while fail-open accepts them).", []string{"queue"}, nil)
	userDroppedDesc = prometheus.NewDesc("nfhelper_queue_user_dropped_total",
		"Packets the kernel dropped because the reader's socket buffer was full.", []string{"queue"}, nil)
	serverUpDesc = serverDesc("nfhelper_real_server_up",
		"0 if the real server takes no new connections whatever its weight (down by its checks or nfhelperctl server down), else 1 (see nfhelper_real_server_weight for drained servers).")
	checkLatencyDesc = serverDesc("nfhelper_health_check_latency_seconds",
		"How long each real server's last health check took, passed or failed.")
	checkFailuresDesc = prometheus.NewDesc("nfhelper_health_check_failures_total",
		"Failed health checks of each real server, by cause (refused, timeout, reset, unreachable, greeting, login, data, status, body, tls, exit, killed, error).",
		[]string{"service", "server", "cause"}, nil)
	stateChangesDesc = prometheus.NewDesc("nfhelper_real_server_state_changes_total",
		"Times a real server went down or came back up (by its checks or nfhelperctl).", nil, nil)
	vrrpMasterDesc = prometheus.NewDesc("nfhelper_vrrp_master",
		"1 if keepalived's notify script last reported this router MASTER (the VRRP state file), else 0 (backup, fault, stopped, or a missing, bad or stale file). Absent when no vrrp_state_file is configured and the default file does not exist.",
		nil, nil)
)

// queueCounters are what each nfq.Queue counts itself.
var queueCounters = [...]struct {
	desc *prometheus.Desc
	get  func(*nfq.Queue) uint64
}{
	{prometheus.NewDesc("nfhelper_queue_read_errors_total",
		"Receive errors each queue's reader survived (ENOBUFS: the kernel dropped queue messages, the socket buffer was full).",
		[]string{"queue"}, nil), func(q *nfq.Queue) uint64 { return q.ReadErrors.Load() }},
	{prometheus.NewDesc("nfhelper_queue_verdict_errors_total",
		"Verdicts of each queue the kernel refused or that could not be sent (a packet id it no longer holds, a malformed altered packet).",
		[]string{"queue"}, nil), func(q *nfq.Queue) uint64 { return q.VerdictErrors.Load() }},
	{prometheus.NewDesc("nfhelper_queue_malformed_total",
		"Messages from the kernel on each queue's socket that could not be parsed.",
		[]string{"queue"}, nil), func(q *nfq.Queue) uint64 { return q.Malformed.Load() }},
}

// serverMetrics are each real server's families, labelled service, server.
var serverMetrics = [...]struct {
	desc *prometheus.Desc
	typ  prometheus.ValueType
	get  func(*ipvs.RealServerView) float64
}{
	{serverDesc("nfhelper_real_server_connections_total", "Connections scheduled to (or learned for) each real server."),
		prometheus.CounterValue, func(rs *ipvs.RealServerView) float64 { return float64(rs.Conns) }},
	{serverDesc("nfhelper_real_server_active_connections", "Established connections of each real server (ipvsadm ActiveConn)."),
		prometheus.GaugeValue, func(rs *ipvs.RealServerView) float64 { return float64(rs.Active) }},
	{serverDesc("nfhelper_real_server_inactive_connections", "Connections of each real server in other states (ipvsadm InActConn)."),
		prometheus.GaugeValue, func(rs *ipvs.RealServerView) float64 { return float64(rs.Inactive) }},
	{serverDesc("nfhelper_real_server_packets_total", "Packets, both directions, of each real server's ended connections (needs nf_conntrack_acct=1)."),
		prometheus.CounterValue, func(rs *ipvs.RealServerView) float64 { return float64(rs.Packets) }},
	{serverDesc("nfhelper_real_server_bytes_total", "Bytes, both directions, of each real server's ended connections (needs nf_conntrack_acct=1)."),
		prometheus.CounterValue, func(rs *ipvs.RealServerView) float64 { return float64(rs.Bytes) }},
	{serverDesc("nfhelper_real_server_weight", "Scheduling weight of each real server (0: quiesced)."),
		prometheus.GaugeValue, func(rs *ipvs.RealServerView) float64 { return float64(rs.Weight) }},
}

func serverDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, []string{"service", "server"}, nil)
}

// engineCounters are ipvs's registry of the engine's counters, and
// engineDescs their families by the same index; helperCounters and
// helperDescs likewise each helper's, labelled helper.
var (
	engineCounters              = ipvs.Counters()
	engineDescs, engineFamilies = descsOf(len(engineCounters), func(i int) (string, string, string) {
		c := &engineCounters[i]
		return c.Metric, c.Help, c.LabelName
	})
	helperCounters              = ipvs.HelperCounters()
	helperDescs, helperFamilies = descsOf(len(helperCounters), func(i int) (string, string, string) {
		c := &helperCounters[i]
		return c.Metric, c.Help, c.LabelName
	}, "helper")
)

// descsOf makes the families of a registry of n counters: by index, the
// counter's metric, help and label name ("" for none) as counter tells,
// its labels the fixed ones and that. Counters that share a metric (the
// refusals) share its desc; families lists each once.
func descsOf(n int, counter func(i int) (metric, help, label string), fixed ...string) (descs, families []*prometheus.Desc) {
	byMetric := map[string]*prometheus.Desc{}
	for i := range n {
		metric, help, label := counter(i)
		d := byMetric[metric]
		if d == nil {
			labels := fixed
			if label != "" {
				labels = append(slices.Clone(fixed), label)
			}
			d = prometheus.NewDesc(metric, help, labels, nil)
			byMetric[metric] = d
			families = append(families, d)
		}
		descs = append(descs, d)
	}
	return descs, families
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{queuePacketsDesc, verdictsDesc, latencyDesc, connectionsDesc,
		serviceInfoDesc, serviceServersDesc, serviceActiveDesc, serviceInactiveDesc, kernelDroppedDesc, userDroppedDesc,
		serverUpDesc, checkLatencyDesc, checkFailuresDesc, stateChangesDesc, vrrpMasterDesc} {
		ch <- d
	}
	for _, q := range queueCounters {
		ch <- q.desc
	}
	for _, s := range serverMetrics {
		ch <- s.desc
	}
	for _, d := range engineFamilies {
		ch <- d
	}
	for _, d := range helperFamilies {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	c.m.collectQueues(ch)
	c.m.collectLatency(ch)
	if e := c.m.engine; e != nil {
		for i := range engineCounters {
			k := &engineCounters[i]
			var labels []string
			if k.LabelValue != "" {
				labels = []string{k.LabelValue}
			}
			send(ch, engineDescs[i], prometheus.CounterValue, float64(k.Load(&e.Stats)), labels...)
		}
		collectHelpers(ch, e)
		send(ch, connectionsDesc, prometheus.GaugeValue, float64(e.Table.Len()), "tcp")
		send(ch, connectionsDesc, prometheus.GaugeValue, float64(e.UDP.Len()), "udp")
		collectServices(ch, e)
	}
	c.m.collectHealth(ch)
	c.m.collectVRRP(ch)
}

// send passes one sample on. One that cannot be exported (a label value
// that is not UTF-8: service names come from the config) fails alone.
func send(ch chan<- prometheus.Metric, d *prometheus.Desc, typ prometheus.ValueType, v float64, labels ...string) {
	m, err := prometheus.NewConstMetric(d, typ, v, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}

func (m *Metrics) collectQueues(ch chan<- prometheus.Metric) {
	for i := range m.slots {
		if !m.known[i] {
			continue
		}
		queue := strconv.Itoa(int(m.first) + i)
		var n uint64
		for k := range numKinds {
			v := m.slots[i].verdicts[k].Load()
			n += v
			send(ch, verdictsDesc, prometheus.CounterValue, float64(v), queue, kindNames[k])
		}
		send(ch, queuePacketsDesc, prometheus.CounterValue, float64(n), queue)
	}
	for _, q := range m.queues {
		for _, c := range queueCounters {
			send(ch, c.desc, prometheus.CounterValue, float64(c.get(q)), strconv.Itoa(int(q.Num)))
		}
	}
	for _, k := range nfq.KernelStats(nfq.ProcQueueStats) {
		queue := strconv.Itoa(int(k.Num))
		send(ch, kernelDroppedDesc, prometheus.CounterValue, float64(k.Dropped), queue)
		send(ch, userDroppedDesc, prometheus.CounterValue, float64(k.UserDropped), queue)
	}
}

func (m *Metrics) collectLatency(ch chan<- prometheus.Metric) {
	buckets := make(map[float64]uint64, len(bounds))
	var cum uint64
	for i, b := range bounds {
		cum += m.buckets[i].Load()
		buckets[float64(b)/1e9] = cum
	}
	cum += m.buckets[len(bounds)].Load()
	// The count is the +Inf bucket by construction, even while observers run.
	ch <- prometheus.MustNewConstHistogram(latencyDesc, cum, float64(m.sumNanos.Load())/1e9, buckets)
}

// collectHelpers sends every helper's counters, registered ones at zero
// too, so that a dashboard finds each helper's series before its first use.
func collectHelpers(ch chan<- prometheus.Metric, e *ipvs.Engine) {
	for _, h := range e.HelperStats() {
		for i := range helperCounters {
			k := &helperCounters[i]
			labels := []string{h.Helper}
			if k.LabelValue != "" {
				labels = append(labels, k.LabelValue)
			}
			send(ch, helperDescs[i], prometheus.CounterValue, float64(k.Load(h.Stats)), labels...)
		}
	}
}

func collectServices(ch chan<- prometheus.Metric, e *ipvs.Engine) {
	// Copies taken under each service's lock: a reload's commit writes
	// weights, an add-on learning a server appends to its list.
	for _, s := range e.ServiceViews() {
		proto, mode := "tcp", "balance"
		if s.UDP {
			proto = "udp"
		}
		if s.AddOn {
			mode = "addon"
		}
		send(ch, serviceInfoDesc, prometheus.GaugeValue, 1, s.Name, s.VIP.String(), proto, mode, s.Scheduler, s.Helper)
		var active, inactive int64
		n := 0
		for j := range s.Servers {
			rs := &s.Servers[j]
			active += rs.Active
			inactive += rs.Inactive
			addr := rs.Addr.String()
			for _, sm := range serverMetrics {
				send(ch, sm.desc, sm.typ, sm.get(rs), s.Name, addr)
			}
			if !rs.Sorry {
				n++
			}
			if !s.AddOn {
				up := 1.0
				if rs.Down {
					up = 0
				}
				send(ch, serverUpDesc, prometheus.GaugeValue, up, s.Name, addr)
			}
		}
		send(ch, serviceServersDesc, prometheus.GaugeValue, float64(n), s.Name)
		send(ch, serviceActiveDesc, prometheus.GaugeValue, float64(active), s.Name)
		send(ch, serviceInactiveDesc, prometheus.GaugeValue, float64(inactive), s.Name)
	}
}

// collectHealth reads the monitor's last latencies and failure counts. A
// server of type none is never checked: it has neither.
func (m *Metrics) collectHealth(ch chan<- prometheus.Metric) {
	if f := m.StateChanges; f != nil {
		send(ch, stateChangesDesc, prometheus.CounterValue, float64(f()))
	}
	if m.health == nil {
		return
	}
	m.health.Each(func(k health.Key, st health.Status) {
		addr := k.Addr.String()
		if st.Checks > 0 {
			send(ch, checkLatencyDesc, prometheus.GaugeValue, st.LastLatency.Seconds(), k.Service, addr)
		}
		for cause, n := range st.Failures {
			send(ch, checkFailuresDesc, prometheus.CounterValue, float64(n), k.Service, addr, cause)
		}
	})
}

// collectVRRP reads the VRRP state file: no sample when it does not exist
// and nobody configured it (a router not in a pair).
func (m *Metrics) collectVRRP(ch chan<- prometheus.Metric) {
	if m.VRRPStateFile == nil {
		return
	}
	path, configured := m.VRRPStateFile()
	st, err := vrrp.Read(path)
	if errors.Is(err, vrrp.ErrNoStateFile) && !configured {
		return
	}
	master := 0.0
	if err == nil && st.IsMaster() {
		master = 1
	}
	send(ch, vrrpMasterDesc, prometheus.GaugeValue, master)
}
