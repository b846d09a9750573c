// Package ctl is nfhelperd's control socket: a small HTTP/JSON API on a unix
// socket (root only), its client, and the text forms nfhelperctl prints.
//
// Every endpoint but one is a GET that answers one JSON document:
//
//	/v1/status    Status
//	/v1/services  Services
//	/v1/conns     Conns (?service=NAME&server=ADDRESS:PORT: of that server)
//	/v1/check     CheckReport
//	/v1/rules     Rules
//
// POST /v1/server takes a ServerRequest and answers the RealServer after
// the change.
//
// Errors answer a non-2xx status with {"error": "...", "kind": "..."}.
package ctl

import (
	"net/netip"
	"os"
	"time"
)

// EnvSocket names the environment variable that overrides DefaultSocket,
// for the daemon and nfhelperctl alike.
const EnvSocket = "NFHELPER_SOCKET"

// DefaultSocket is where the daemon listens unless EnvSocket says otherwise.
const DefaultSocket = "/run/nfhelper/nfhelperd.sock"

// SocketPath is the socket path from the environment, or DefaultSocket.
func SocketPath() string {
	if p := os.Getenv(EnvSocket); p != "" {
		return p
	}
	return DefaultSocket
}

// API paths.
const (
	PathStatus   = "/v1/status"
	PathServices = "/v1/services"
	PathConns    = "/v1/conns"
	PathCheck    = "/v1/check"
	PathRules    = "/v1/rules"
)

// Status is the daemon's identity, configuration summary and counters.
type Status struct {
	Pid           int       `json:"pid"`
	Started       time.Time `json:"started"`
	UptimeSeconds int64     `json:"uptime_seconds"`
	Datapath      string    `json:"datapath"`
	Queues        Queues    `json:"queues"`
	Config        string    `json:"config"`
	Table         string    `json:"table"` // e.g. "inet nfhelper"
	Services      int       `json:"services"`
	Helpers       int       `json:"helpers"`     // add-on helpers
	Connections   int       `json:"connections"` // TCP connections and UDP flows in the table
	TCP           int       `json:"tcp"`
	UDP           int       `json:"udp"`
	Reloads       int       `json:"reloads"` // successful SIGHUP reloads
	LastReload    *Reload   `json:"last_reload,omitempty"`
	// Stats are the engine's counters by their registry names (ipvs.Counters);
	// StatNames gives their order.
	Stats map[string]uint64 `json:"stats"`
	// HelperStats are each helper's counters by helper name, then by
	// their registry names (ipvs.HelperCounters). Absent from a daemon
	// that predates them.
	HelperStats map[string]map[string]uint64 `json:"helper_stats,omitempty"`
	// VRRP is the router's role in a VRRP pair, read at the request. Absent
	// when no vrrp_state_file is configured and the default file does not
	// exist (a router not in a pair), and from a daemon that predates it.
	VRRP *VRRP `json:"vrrp,omitempty"`
}

// VRRP is what keepalived's notify script last wrote to the VRRP state
// file (vrrp.Read).
type VRRP struct {
	// State is MASTER, BACKUP, FAULT or STOP (keepalived stopped), or
	// VRRPUnknown when the file tells nothing usable: Problem says why.
	State   string    `json:"state"`
	Name    string    `json:"name,omitempty"` // the sync group's or instance's
	Since   time.Time `json:"since,omitzero"`
	File    string    `json:"file"`
	Problem string    `json:"problem,omitempty"`
}

// VRRPUnknown is VRRP.State when the state file tells nothing usable.
const VRRPUnknown = "unknown"

// Queues is the range of NFQUEUE numbers the daemon reads.
type Queues struct {
	First uint16 `json:"first"`
	Count uint16 `json:"count"`
}

// Reload is the outcome of the latest reload attempt.
type Reload struct {
	Time  time.Time `json:"time"`
	Error string    `json:"error,omitempty"`
}

// Services lists the balanced services and the add-on helpers.
type Services struct {
	Services []Service `json:"services"`
	Helpers  []Service `json:"helpers"`
	// KernelError: kernel-scheduled services' counts could not be read
	// (they show the engine's).
	KernelError string `json:"kernel_error,omitempty"`
}

// Service is a virtual service (VIP set) or an add-on helper (Match set).
type Service struct {
	Name      string         `json:"name"`
	Protocol  string         `json:"protocol"` // TCP or UDP
	VIP       netip.AddrPort `json:"vip,omitzero"`
	Match     netip.AddrPort `json:"match,omitzero"`
	Scheduler string         `json:"scheduler,omitempty"`
	// ScheduledBy is ScheduledByKernel or ScheduledByDaemon; empty for an
	// add-on. A kernel-scheduled service's Active and Inactive counts and
	// templates are conntrack's and the ruleset's, read at the request.
	ScheduledBy string       `json:"scheduled_by,omitempty"`
	Helper      string       `json:"helper,omitempty"`
	Persistence *Persistence `json:"persistence,omitempty"`
	Policy      *Policy      `json:"policy,omitempty"` // helped services only
	Servers     []RealServer `json:"servers"`
}

// Persistence is a persistent service's settings (ipvsadm -p, -M).
type Persistence struct {
	TimeoutSeconds int64 `json:"timeout_seconds"`
	Prefix4        int   `json:"prefix4"`
	Prefix6        int   `json:"prefix6"`
	Templates      int   `json:"templates"` // clients remembered now
}

// Policy is a helped service's data-channel policy.
type Policy struct {
	Loose                     bool  `json:"loose"`
	AllowLowPorts             bool  `json:"allow_low_ports"`
	MaxDataChannels           int   `json:"max_data_channels"`
	DataChannelTimeoutSeconds int64 `json:"data_channel_timeout_seconds"`
}

// RealServer is a real server (configured, or learned by an add-on helper)
// and its counters. Packets and Bytes are of ended connections, from
// conntrack accounting. Weight is the one in effect.
type RealServer struct {
	Address  netip.AddrPort `json:"address"`
	Weight   int            `json:"weight"`
	Active   int64          `json:"active_conns"`
	Inactive int64          `json:"inactive_conns"`
	Conns    uint64         `json:"conns"`
	Packets  uint64         `json:"packets"`
	Bytes    uint64         `json:"bytes"`

	// State is "down" when the server takes no new connections whatever
	// its weight (down by its checks or an override), else "up"; empty
	// for learned servers.
	State string `json:"state,omitempty"`
	// Down: out of scheduling, by its checks or an override.
	Down bool `json:"down,omitempty"`
	// Sorry: the service's sorry server, listed last.
	Sorry bool `json:"sorry,omitempty"`
	// Health is "up" or "down" as its checks say, Check their type
	// ("none": always up); empty when the daemon does not know.
	Health       string    `json:"health,omitempty"`
	Check        string    `json:"check,omitempty"`
	Since        time.Time `json:"since,omitzero"` // of its health state
	LastFailure  time.Time `json:"last_failure,omitzero"`
	LastCause    string    `json:"last_cause,omitempty"`
	ConfigWeight *int      `json:"config_weight,omitempty"` // the file's weight
	Override     *Override `json:"override,omitempty"`
}

// Connections counts the server's connections, established or not.
func (rs *RealServer) Connections() int64 { return rs.Active + rs.Inactive }

// Conns is the connection table.
type Conns struct {
	Conns []Conn `json:"conns"`
	// KernelError: kernel-scheduled services' connections could not be
	// read (only the engine's are listed).
	KernelError string `json:"kernel_error,omitempty"`
}

// Conn is one connection (TCP) or flow (UDP).
type Conn struct {
	Protocol  string         `json:"protocol"`
	State     string         `json:"state"`
	ExpiresIn int64          `json:"expires_in"` // seconds
	Client    netip.AddrPort `json:"client"`
	VIP       netip.AddrPort `json:"vip"`
	Server    netip.AddrPort `json:"server"`
	ClientNAT netip.AddrPort `json:"client_nat,omitzero"`
	Service   string         `json:"service"`
	Helper    string         `json:"helper,omitempty"`
	// About is a UDP flow's request as its helper read it (TFTP: the
	// operation, file, mode and options).
	About string `json:"about,omitempty"`
	// Replies are the flows its request let the server start (TFTP
	// transfers): the server's port and the VIP's as the client sees it.
	Replies  []Reply   `json:"replies,omitempty"`
	Channels []Channel `json:"channels,omitempty"`
	// ScheduledBy is ScheduledByKernel for a connection read from
	// conntrack, not in the engine's table.
	ScheduledBy string `json:"scheduled_by,omitempty"`
}

// Reply is a reply flow of a UDP request (a TFTP transfer).
type Reply struct {
	Server     netip.AddrPort `json:"server"`
	VIP        netip.AddrPort `json:"vip"`
	AgeSeconds int64          `json:"age"`
}

// Channel is an announced data channel of a helped connection. Passive:
// Client (any port) connects to VIP, sent on to Server. Active: Server
// (any port) connects to Client, leaving with VIP's address as source; NAT,
// behind the user's SNAT, is the announced translated address.
type Channel struct {
	Kind      string         `json:"kind"`
	Client    netip.AddrPort `json:"client,omitzero"`
	VIP       netip.AddrPort `json:"vip,omitzero"`
	Server    netip.AddrPort `json:"server,omitzero"`
	NAT       netip.AddrPort `json:"nat,omitzero"`
	ExpiresIn int64          `json:"expires_in"` // seconds
}

// Check results.
const (
	CheckOK   = "ok"
	CheckInfo = "info" // a fact worth knowing, not a problem
	CheckWarn = "warn"
	CheckFail = "fail"
)

// CheckReport is what the daemon found about the kernel and the ruleset.
type CheckReport struct {
	Checks []Check `json:"checks"`
}

// Check is one finding.
type Check struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Detail string `json:"detail"`
}

// Failed reports whether any check failed.
func (r *CheckReport) Failed() bool {
	for _, c := range r.Checks {
		if c.Status == CheckFail {
			return true
		}
	}
	return false
}

// Rules is the daemon's own table as text.
type Rules struct {
	Table  string `json:"table"`
	Source string `json:"source"` // "nft" (nft list table) or "netlink" (a summary)
	Text   string `json:"text"`
}

// errorReply is the body of a failed request.
type errorReply struct {
	Error string `json:"error"`
	// Kind names the sentinel the error wraps, if any (errorKinds).
	Kind string `json:"kind,omitempty"`
}
