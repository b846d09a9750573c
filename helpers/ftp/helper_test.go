package ftp

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/nfhelper/nfhelper/ipvs"
)

var (
	session4 = ipvs.Session{
		Client: netip.MustParseAddrPort("203.0.113.2:40000"),
		VIP:    netip.MustParseAddrPort("198.51.100.10:21"),
		Server: netip.MustParseAddrPort("10.0.0.11:21"),
	}
	// sessionShort has a VIP shorter in 227 form than the real server.
	sessionShort = ipvs.Session{
		Client: netip.MustParseAddrPort("203.0.113.2:40000"),
		VIP:    netip.MustParseAddrPort("10.0.0.1:21"),
		Server: netip.MustParseAddrPort("192.168.100.200:21"),
	}
	session6 = ipvs.Session{
		Client: netip.MustParseAddrPort("[2001:db8:2::2]:40000"),
		VIP:    netip.MustParseAddrPort("[2001:db8:1::10]:21"),
		Server: netip.MustParseAddrPort("[fd00::11]:21"),
	}
	loose     = ipvs.Policy{Loose: true, MaxChannels: 1}
	lowPorts  = ipvs.Policy{AllowLowPorts: true, MaxChannels: 1}
	noPolicy  = ipvs.DefaultPolicy
	allPolicy = ipvs.Policy{Loose: true, AllowLowPorts: true}
	blocking  = ipvs.Policy{BlockRefused: true, MaxChannels: 1}
)

func TestRegistered(t *testing.T) {
	if h, ok := ipvs.LookupHelper("ftp"); !ok || h.Name() != "ftp" {
		t.Fatalf(`LookupHelper("ftp") = %v, %v`, h, ok)
	}
}

const (
	pasvCmd = "PASV\r\n"
	epsvCmd = "EPSV\r\n"
)

// A case is a short exchange fed in one piece per turn; the property test
// also feeds every case in every other way.
type testCase struct {
	name   string
	s      *ipvs.Session
	p      *ipvs.Policy
	port   uint16 // the VIP port the opener answers, 0: the server's
	turns  []turn
	client string // the delivered client stream; "" means as sent
	server string // the delivered server stream; "" means as sent
	log    []string
	stop   bool
}

func c(text string) turn { return turn{ipvs.FromClient, text, false} }
func s(text string) turn { return turn{ipvs.FromServer, text, false} }

var cases = []testCase{
	{
		name:   "227 vsftpd, VIP longer",
		turns:  []turn{c(pasvCmd), s("227 Entering Passive Mode (10,0,0,11,156,64).\r\n")},
		server: "227 Entering Passive  (198,51,100,10,156,64).\r\n",
		log:    []string{"passive 10.0.0.11:40000"},
	},
	{
		name:   "227 VIP shorter",
		s:      &sessionShort,
		turns:  []turn{c(pasvCmd), s("227 Entering Passive Mode (192,168,100,200,156,64).\r\n")},
		server: "227 Entering Passive Mode        (10,0,0,1,156,64).\r\n",
		log:    []string{"passive 192.168.100.200:40000"},
	},
	{
		name:   "227 without free text: the line grows",
		turns:  []turn{c(pasvCmd), s("227 (10,0,0,11,4,1)\r\n")},
		server: "227 (198,51,100,10,4,1)\r\n",
		log:    []string{"passive 10.0.0.11:1025"},
	},
	{
		name:   "227 with too little free text: the line grows",
		turns:  []turn{c(pasvCmd), s("227 ab(10,0,0,11,4,1)\r\n")},
		server: "227 ab(198,51,100,10,4,1)\r\n",
		log:    []string{"passive 10.0.0.11:1025"},
	},
	{
		name:   "227 without free text, VIP shorter: spaces inserted",
		s:      &sessionShort,
		turns:  []turn{c(pasvCmd), s("227 (192,168,100,200,4,1)\r\n")},
		server: "227        (10,0,0,1,4,1)\r\n",
		log:    []string{"passive 192.168.100.200:1025"},
	},
	{
		name:   "227 without parentheses, bare LF",
		turns:  []turn{c("pasv\n"), s("227 Entering passive mode. 10,0,0,11,156,64\n")},
		server: "227 Entering passive mo198,51,100,10,156,64\n",
		log:    []string{"passive 10.0.0.11:40000"},
	},
	{
		name:   "227 without parentheses, VIP shorter",
		s:      &sessionShort,
		turns:  []turn{c(pasvCmd), s("227 Data transfer will passively listen to 192,168,100,200,4,51\r\n")},
		server: "227 Data transfer will passively listen to        10,0,0,1,4,51\r\n",
		log:    []string{"passive 192.168.100.200:1075"},
	},
	{
		name:   "227 leading zeros are not kept",
		turns:  []turn{c(pasvCmd), s("227 Entering Passive Mode (010,000,000,011,004,051)\r\n")},
		server: "227 Entering Passive Mode      (198,51,100,10,4,51)\r\n",
		log:    []string{"passive 10.0.0.11:1075"},
	},
	{
		name:   "227 same length, new port",
		s:      &sessionShort,
		port:   40001,
		turns:  []turn{c(pasvCmd), s("227 Entering Passive Mode (192,168,100,200,156,64).\r\n")},
		server: "227 Entering Passive Mode        (10,0,0,1,156,65).\r\n",
		log:    []string{"passive 192.168.100.200:40000"},
	},
	{
		name:   "227 port change from the opener",
		port:   1025,
		turns:  []turn{c(pasvCmd), s("227 Entering Passive Mode (10,0,0,11,156,64).\r\n")},
		server: "227 Entering Passive Mod (198,51,100,10,4,1).\r\n",
		log:    []string{"passive 10.0.0.11:40000"},
	},
	{
		name:  "227 already naming the VIP",
		s:     &ipvs.Session{Client: session4.Client, VIP: session4.VIP, Server: netip.MustParseAddrPort("198.51.100.10:21")},
		turns: []turn{c(pasvCmd), s("227 Entering Passive Mode (198,51,100,10,156,64).\r\n")},
		log:   []string{"passive 198.51.100.10:40000"},
	},
	{
		name:  "227 unsolicited",
		turns: []turn{s("227 Entering Passive Mode (10,0,0,11,156,64).\r\n")},
		log:   []string{"refuse unsolicited"},
	},
	{
		name:   "227 answers one PASV only",
		turns:  []turn{c(pasvCmd), s("227 (10,0,0,11,156,64)\r\n227 (10,0,0,11,156,65)\r\n")},
		server: "227 (198,51,100,10,156,64)\r\n227 (10,0,0,11,156,65)\r\n",
		log:    []string{"passive 10.0.0.11:40000", "refuse unsolicited"},
	},
	{
		name:   "pipelined PASVs",
		turns:  []turn{c("PASV\r\nPASV\r\n"), s("227 (10,0,0,11,156,64)\r\n227 (10,0,0,11,156,65)\r\n")},
		server: "227 (198,51,100,10,156,64)\r\n227 (198,51,100,10,156,65)\r\n",
		log:    []string{"passive 10.0.0.11:40000", "passive 10.0.0.11:40001"},
	},
	{
		name:  "227 bounce",
		turns: []turn{c(pasvCmd), s("227 Entering Passive Mode (10,0,0,12,156,64).\r\n")},
		log:   []string{"refuse bounce"},
	},
	{
		name:   "227 bounce, loose policy",
		p:      &loose,
		turns:  []turn{c(pasvCmd), s("227 Entering Passive Mode (10,0,0,12,156,64).\r\n")},
		server: "227 Entering Passive  (198,51,100,10,156,64).\r\n",
		log:    []string{"passive 10.0.0.12:40000"},
	},
	{
		name:  "227 low port",
		turns: []turn{c(pasvCmd), s("227 Entering Passive Mode (10,0,0,11,0,22).\r\n")},
		log:   []string{"refuse low_port"},
	},
	{
		name:   "227 low port allowed",
		p:      &lowPorts,
		turns:  []turn{c(pasvCmd), s("227 Entering Passive Mode (10,0,0,11,3,255).\r\n")},
		server: "227 Entering Passive  (198,51,100,10,3,255).\r\n",
		log:    []string{"passive 10.0.0.11:1023"},
	},
	{
		name:  "227 invalid numbers",
		turns: []turn{c(pasvCmd), s("227 x 1216,256,2,127,127,127\r\n")},
	},
	{
		name:  "227 inside a line",
		turns: []turn{c(pasvCmd), s("150 see 227 Entering Passive Mode (10,0,0,11,156,64).\r\n")},
	},
	{
		name:  "227 from the client",
		turns: []turn{c("227 Entering Passive Mode (10,0,0,11,156,64).\r\n")},
	},
	{
		name:  "227 with an IPv6 VIP",
		s:     &ipvs.Session{Client: session6.Client, VIP: session6.VIP, Server: netip.MustParseAddrPort("10.0.0.11:21")},
		turns: []turn{c(pasvCmd), s("227 Entering Passive Mode (10,0,0,11,156,64).\r\n")},
	},
	{
		name:  "227 with an IPv6 server",
		s:     &session6,
		turns: []turn{c(pasvCmd), s("227 Entering Passive Mode (10,0,0,11,156,64).\r\n")},
		log:   []string{"refuse bounce"},
	},
	{
		name:  "227 after EPSV ALL",
		turns: []turn{c("EPSV ALL\r\n"), s("200 EPSV ALL ok.\r\n"), c(pasvCmd), s("227 Entering Passive Mode (10,0,0,11,156,64).\r\n")},
		log:   []string{"refuse epsv_all", "refuse unsolicited"},
	},
	{
		name: "227 multi-line, numbers on a continuation line",
		turns: []turn{c(pasvCmd), s("227-Entering Passive Mode\r\n" +
			" data port at 10,0,0,11,156,64 now\r\n 10,0,0,11,156,65\r\n227 OK\r\n")},
		server: "227-Entering Passive Mode\r\n" +
			" data port198,51,100,10,156,64 now\r\n 10,0,0,11,156,65\r\n227 OK\r\n",
		log: []string{"passive 10.0.0.11:40000"},
	},
	{
		name:   "227 multi-line, numbers on the first line",
		turns:  []turn{c(pasvCmd), s("227-Entering Passive Mode (10,0,0,11,156,64)\r\n227 (10,0,0,11,1,1)\r\n")},
		server: "227-Entering Passive  (198,51,100,10,156,64)\r\n227 (10,0,0,11,1,1)\r\n",
		log:    []string{"passive 10.0.0.11:40000"},
	},
	{
		name:   "227 multi-line, numbers on the last line",
		turns:  []turn{c(pasvCmd), s("227-Entering Passive Mode\r\n227-(10,0,0,11,999,1)\r\n227 Here (10,0,0,11,156,64).\r\n")},
		server: "227-Entering Passive Mode\r\n227-(10,0,0,11,999,1)\r\n227  (198,51,100,10,156,64).\r\n",
		log:    []string{"passive 10.0.0.11:40000"},
	},
	{
		name: "227 inside a FEAT listing",
		turns: []turn{c("FEAT\r\n"), s("211-Features:\r\n EPRT\r\n EPSV\r\n227 (10,0,0,11,156,64)\r\n" +
			"227-x\r\n PASV\r\n211 End\r\n"), c(pasvCmd), s("227 (10,0,0,11,156,64)\r\n")},
		server: "211-Features:\r\n EPRT\r\n EPSV\r\n227 (10,0,0,11,156,64)\r\n" +
			"227-x\r\n PASV\r\n211 End\r\n227 (198,51,100,10,156,64)\r\n",
		log: []string{"passive 10.0.0.11:40000"},
	},
	{
		name:  "229",
		turns: []turn{c(epsvCmd), s("229 Entering Extended Passive Mode (|||6446|)\r\n")},
		log:   []string{"passive 10.0.0.11:6446"},
	},
	{
		name:   "229 port change, longer",
		port:   40000,
		turns:  []turn{c("EPSV 1\r\n"), s("229 Entering Extended Passive Mode (!!!6446!)\r\n")},
		server: "229 Entering Extended Passive Mod (!!!40000!)\r\n",
		log:    []string{"passive 10.0.0.11:6446"},
	},
	{
		name:   "229 port change, shorter",
		port:   1024,
		s:      &session6,
		turns:  []turn{c("epsv 2\r\n"), s("229 Extended Passive mode OK (|||40000|)\r\n")},
		server: "229 Extended Passive mode OK  (|||1024|)\r\n",
		log:    []string{"passive [fd00::11]:40000"},
	},
	{
		name:   "229 port change, no free text",
		port:   40000,
		turns:  []turn{c(epsvCmd), s("229 (|||6446|)\r\n")},
		server: "229 (|||40000|)\r\n",
		log:    []string{"passive 10.0.0.11:6446"},
	},
	{
		name:  "229 unsolicited",
		turns: []turn{c(pasvCmd), s("229 Entering Extended Passive Mode (|||6446|)\r\n")},
		log:   []string{"refuse unsolicited"},
	},
	{
		name:  "229 low port",
		turns: []turn{c(epsvCmd), s("229 Entering Extended Passive Mode (|||22|)\r\n")},
		log:   []string{"refuse low_port"},
	},
	{
		name:  "229 port too large",
		turns: []turn{c(epsvCmd), s("229 Entering Extended Passive Mode (|||65536|)\r\n")},
	},
	{
		name:  "PORT",
		turns: []turn{c("TYPE I\r\nport 203,0,113,2,156,64\r\n")},
		log:   []string{"active 203.0.113.2:40000"},
	},
	{
		name:  "PORT bounce",
		turns: []turn{c("PORT 10,0,0,12,156,64\r\n")},
		log:   []string{"refuse bounce"},
	},
	{
		name:  "PORT bounce, loose policy",
		p:     &loose,
		turns: []turn{c("PORT 10,0,0,12,156,64\r\n")},
		log:   []string{"active 10.0.0.12:40000"},
	},
	{
		name:  "PORT low port",
		turns: []turn{c("PORT 203,0,113,2,3,255\r\n")},
		log:   []string{"refuse low_port"},
	},
	{
		name:  "PORT low port allowed",
		p:     &lowPorts,
		turns: []turn{c("PORT 203,0,113,2,3,255\r\n")},
		log:   []string{"active 203.0.113.2:1023"},
	},
	{
		name:  "PORT invalid",
		turns: []turn{c("PORT 203,0,113,2,256,22\r\n")},
		log:   []string{"refuse malformed"},
	},
	{
		name:  "PORT from the server",
		turns: []turn{s("PORT 203,0,113,2,156,64\r\n")},
	},
	{
		name:  "PORT in an IPv6 session, even loose",
		s:     &session6,
		p:     &allPolicy,
		turns: []turn{c("PORT 203,0,113,2,156,64\r\n")},
		log:   []string{"refuse bounce"},
	},
	{
		name:  "EPRT",
		turns: []turn{c("EPRT |1|203.0.113.2|40000|\r\n")},
		log:   []string{"active 203.0.113.2:40000"},
	},
	{
		name:  "EPRT IPv4-mapped in an IPv4 session",
		turns: []turn{c("EPRT |2|::ffff:203.0.113.2|40000|\r\n")},
		log:   []string{"active 203.0.113.2:40000"},
	},
	{
		name:  "EPRT IPv6",
		s:     &session6,
		turns: []turn{c("eprt |2|2001:DB8:2:0::2|40000|\r\n")},
		log:   []string{"active [2001:db8:2::2]:40000"},
	},
	{
		name:  "EPRT bounce",
		s:     &session6,
		turns: []turn{c("EPRT #2#2001:db8:2::3#40000#\r\n")},
		log:   []string{"refuse bounce"},
	},
	{
		name:  "EPRT bounce, loose policy",
		s:     &session6,
		p:     &loose,
		turns: []turn{c("EPRT #2#2001:db8:2::3#40000#\r\n")},
		log:   []string{"active [2001:db8:2::3]:40000"},
	},
	{
		name:  "EPRT low port",
		s:     &session6,
		turns: []turn{c("EPRT |2|2001:db8:2::2|22|\r\n")},
		log:   []string{"refuse low_port"},
	},
	{
		name:  "EPRT family mismatch",
		turns: []turn{c("EPRT |1|2001:db8:2::2|40000|\r\nEPRT |3|203.0.113.2|40000|\r\n")},
		log:   []string{"refuse malformed", "refuse malformed"},
	},
	{
		name: "EPSV ALL",
		turns: []turn{c("EPSV ALL\r\n"), s("200 EPSV ALL ok.\r\n"),
			c("PORT 203,0,113,2,156,64\r\n"), s("500 No.\r\n"),
			c("EPRT |1|203.0.113.2|40000|\r\n"), s("500 No.\r\n"),
			c(pasvCmd), s("500 No.\r\n"),
			c(epsvCmd), s("229 Entering Extended Passive Mode (|||6446|)\r\n")},
		log: []string{"refuse epsv_all", "refuse epsv_all", "refuse epsv_all", "passive 10.0.0.11:6446"},
	},
	{
		name:   "refused announcements blocked",
		p:      &blocking,
		turns:  []turn{c("PORT 10,0,0,12,156,64\r\nport 203,0,113,2,0,25\r\nEPRT |3|203.0.113.2|40000|\r\nPORT 203,0,113,2,156,64\r\n")},
		client: "XPRT 10,0,0,12,156,64\r\nXPRT 203,0,113,2,0,25\r\nXPRT |3|203.0.113.2|40000|\r\nPORT 203,0,113,2,156,64\r\n",
		log:    []string{"refuse bounce", "refuse low_port", "refuse malformed", "active 203.0.113.2:40000"},
	},
	{
		name: "AUTH TLS then 234",
		turns: []turn{c("AUTH TLS\r\n"), s("234 Proceed with negotiation.\r\n"),
			c("\x16\x03\x01PORT 203,0,113,2,156,64\r\n"), s("\x16\x03\x03\r\n227 (10,0,0,11,156,64)\r\n")},
		stop: true,
	},
	{
		name:  "234 without AUTH",
		turns: []turn{s("234 Proceed with negotiation.\r\n"), c("PORT 203,0,113,2,156,64\r\n")},
		log:   []string{"active 203.0.113.2:40000"},
	},
	{
		name: "AUTH GSSAPI, ADAT then 235",
		turns: []turn{c("AUTH GSSAPI\r\n"), s("334 Using authentication type GSSAPI; ADAT must follow\r\n"),
			c("ADAT YIIC\r\n"), s("235-ADAT=YGwG\r\n235 GSSAPI authentication succeeded\r\n"), c("ENC abc\r\n")},
		stop: true,
	},
	{
		name: "AUTH refused, then 227",
		turns: []turn{c("AUTH TLS\r\n"), s("530 Please login with USER and PASS.\r\n"),
			c(pasvCmd), s("227 (10,0,0,11,156,64)\r\n")},
		server: "530 Please login with USER and PASS.\r\n227 (198,51,100,10,156,64)\r\n",
		log:    []string{"passive 10.0.0.11:40000"},
	},
	{
		name: "long lines are never parsed",
		turns: []turn{c(pasvCmd), s("227 Entering Passive Mode" + strings.Repeat(" ", ipvs.MaxCarry) + "(10,0,0,11,156,64)\r\n"),
			c("PORT 203,0,113,2,156,64" + strings.Repeat(" ", ipvs.MaxCarry) + "\r\n"),
			c("PORT 203,0,113,2,156,64\r\n"), c(pasvCmd), s("227 (10,0,0,11,156,64)\r\n")},
		server: "227 Entering Passive Mode" + strings.Repeat(" ", ipvs.MaxCarry) + "(10,0,0,11,156,64)\r\n227 (198,51,100,10,156,64)\r\n",
		// A PORT too long to read is refused: the server must not act on
		// what the helper did not check. ipvs.MaxCarry) + "\r\nPORT 203,0,113,2,156,64\r\n" + pasvCmd,
		log: []string{"refuse malformed", "active 203.0.113.2:40000", "passive 10.0.0.11:40000"},
	},
	{
		name: "long line in a multi-line reply",
		turns: []turn{c(pasvCmd), s("211-Status\r\n" + strings.Repeat("x", 2*ipvs.MaxCarry) + "\r\n227 (10,0,0,11,156,64)\r\n211 End\r\n"),
			s("227 (10,0,0,11,156,64)\r\n")},
		server: "211-Status\r\n" + strings.Repeat("x", 2*ipvs.MaxCarry) + "\r\n227 (10,0,0,11,156,64)\r\n211 End\r\n227 (198,51,100,10,156,64)\r\n",
		log:    []string{"passive 10.0.0.11:40000"},
	},
	{
		name:  "incomplete line at fin",
		turns: []turn{c(pasvCmd), {ipvs.FromServer, "227 (10,0,0,11,156,64)", true}, {ipvs.FromClient, "PORT 203,0,113,2,156,64", true}},
		log:   []string{"refuse malformed"},
	},
}

func (tc *testCase) defaults() (*ipvs.Session, *ipvs.Policy) {
	s, p := tc.s, tc.p
	if s == nil {
		s = &session4
	}
	if p == nil {
		p = &noPolicy
	}
	return s, p
}

func (tc *testCase) streams() (client, server string) {
	for _, t := range tc.turns {
		if t.dir == ipvs.FromClient {
			client += t.text
		} else {
			server += t.text
		}
	}
	return client, server
}

func TestInspect(t *testing.T) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, p := tc.defaults()
			wantClient, wantServer := tc.streams()
			if tc.client != "" {
				wantClient = tc.client
			}
			if tc.server != "" {
				wantServer = tc.server
			}
			client, server, log, m := run(t, s, p, tc.port, tc.turns, nil)
			if client != wantClient {
				t.Errorf("client stream:\n got %q\nwant %q", client, wantClient)
			}
			if server != wantServer {
				t.Errorf("server stream:\n got %q\nwant %q", server, wantServer)
			}
			if !slices.Equal(log, tc.log) {
				t.Errorf("log = %q, want %q", log, tc.log)
			}
			if m.stopped != tc.stop {
				t.Errorf("stopped = %v, want %v", m.stopped, tc.stop)
			}
		})
	}
}

// transcripts are whole control connections, in the styles of the servers
// the helper meets.
var transcripts = []testCase{
	{
		name: "vsftpd",
		turns: []turn{
			s("220 (vsFTPd 3.0.5)\r\n"),
			c("USER ftp\r\n"), s("331 Please specify the password.\r\n"),
			c("PASS \r\n"), s("230 Login successful.\r\n"),
			c("SYST\r\n"), s("215 UNIX Type: L8\r\n"),
			c("FEAT\r\n"), s("211-Features:\r\n EPRT\r\n EPSV\r\n MDTM\r\n PASV\r\n REST STREAM\r\n SIZE\r\n TVFS\r\n227 (10,0,0,11,1,1)\r\n211 End\r\n"),
			c("PWD\r\n"), s("257 \"/\" is the current directory\r\n"),
			c("TYPE I\r\n"), s("200 Switching to Binary mode.\r\n"),
			c(pasvCmd), s("227 Entering Passive Mode (10,0,0,11,156,64).\r\n"),
			c("LIST\r\n"), s("150 Here comes the directory listing.\r\n226 Directory send OK.\r\n"),
			c(epsvCmd), s("229 Entering Extended Passive Mode (|||40001|)\r\n"),
			c("RETR f\r\n"), s("150 Opening BINARY mode data connection for f (3 bytes).\r\n226 Transfer complete.\r\n"),
			c("PORT 203,0,113,2,156,66\r\n"), s("200 PORT command successful. Consider using PASV.\r\n"),
			c("EPRT |1|203.0.113.2|40003|\r\n"), s("200 EPRT command successful. Consider using EPSV.\r\n"),
			c("PORT 10,0,0,99,0,25\r\n"), s("500 Illegal PORT command.\r\n"),
			c("QUIT\r\n"), {ipvs.FromServer, "221 Goodbye.\r\n", true}, {ipvs.FromClient, "", true},
		},
		log: []string{"passive 10.0.0.11:40000", "passive 10.0.0.11:40001", "active 203.0.113.2:40002",
			"active 203.0.113.2:40003", "refuse bounce"},
	},
	{
		name: "proftpd, VIP port change",
		port: 50002,
		turns: []turn{
			s("220 ProFTPD Server (ProFTPD Default Installation) [10.0.0.11]\r\n"),
			c("USER alice\r\n"), s("331 Password required for alice\r\n"),
			c("PASS secret\r\n"), s("230 User alice logged in\r\n"),
			c("FEAT\r\n"), s("211-Features:\r\n LANG en-US*\r\n MDTM\r\n MFMT\r\n UTF8\r\n EPSV\r\n211 End\r\n"),
			c("PASV\r\n"), s("227 Entering Passive Mode (10,0,0,11,195,80).\r\n"),
			c("EPSV\r\n"), s("229 Entering Extended Passive Mode (|||50001|)\r\n"),
			c("STAT\r\n"), s("211-Status of 'ProFTPD'\r\n Connected from 203.0.113.2 (203.0.113.2)\r\n227 (10,0,0,11,1,1)\r\n211 End of status\r\n"),
			c("QUIT\r\n"), s("221 Goodbye.\r\n"),
		},
		log: []string{"passive 10.0.0.11:50000", "passive 10.0.0.11:50001"},
	},
	{
		name: "pure-ftpd",
		turns: []turn{
			s("220---------- Welcome to Pure-FTPd [privsep] [TLS] ----------\r\n220-You are user number 1 of 50 allowed.\r\n" +
				"220-Local time is now 12:00. Server port: 21.\r\n220-227 (10,0,0,11,1,1)\r\n220 You will be disconnected after 15 minutes of inactivity.\r\n"),
			c("USER bob\r\n"), s("331 User bob OK. Password required\r\n"),
			c("PASS x\r\n"), s("230 OK. Current directory is /\r\n"),
			c("PASV\r\n"), s("227 Entering Passive Mode (10,0,0,11,117,48)\r\n"),
			c("EPSV\r\n"), s("229 Extended Passive mode OK (|||30001|)\r\n"),
			c("PASV\r\n"), s("227-Entering Passive Mode\r\n227-Data port at 10,0,0,11,117,50\r\n227 OK\r\n"),
			c("AUTH TLS\r\n"), s("234 AUTH TLS OK.\r\n"),
			c("\x16\x03\x01\x02\x00\x01\x00\x01\xfcPASV\r\n"), s("\x16\x03\x03\x00\x7a227 (10,0,0,11,1,1)\r\n"),
		},
		log:  []string{"passive 10.0.0.11:30000", "passive 10.0.0.11:30001", "passive 10.0.0.11:30002"},
		stop: true,
	},
	{
		name: "RFC 1123 wordings, bare LF, lowercase, shorter VIP",
		s:    &sessionShort,
		turns: []turn{
			s("220 ready\n"),
			c("pasv\n"), s("227 Data transfer will passively listen to 192,168,100,200,4,51\n"),
			c("Pasv\n"), s("227 Entering passive mode. 192,168,100,200,4,52\n"),
			c("PaSv\r\n"), s("227 =192,168,100,200,4,53\r\n"),
			c("epsv\n"), s("229 ok (|||1078|)\n"),
			c("port 203,0,113,2,4,55\n"), s("200 ok\n"),
			c("eprt |1|203.0.113.2|1080|\n"), s("200 ok\n"),
		},
		log: []string{"passive 192.168.100.200:1075", "passive 192.168.100.200:1076", "passive 192.168.100.200:1077",
			"passive 192.168.100.200:1078", "active 203.0.113.2:1079", "active 203.0.113.2:1080"},
	},
	{
		name: "EPSV ALL, unsolicited, bounce, low ports",
		turns: []turn{
			s("220 ready\r\n"),
			s("227 (10,0,0,11,156,64)\r\n"),
			c(pasvCmd), s("227 (10,0,0,12,156,64)\r\n"),
			c(pasvCmd), s("227 (10,0,0,11,0,21)\r\n"),
			c("PORT 203,0,113,2,0,21\r\n"), s("200 ok\r\n"),
			c("EPSV\r\n"), s("229 (|||21|)\r\n"),
			c("EPSV ALL\r\n"), s("200 EPSV ALL command successful.\r\n"),
			c("PORT 203,0,113,2,156,64\r\n"), s("500 no\r\n"),
			c(pasvCmd), s("227 (10,0,0,11,156,64)\r\n"),
			c("EPSV\r\n"), s("229-Entering\r\n229 Entering Extended Passive Mode (|||6446|)\r\n"),
		},
		log: []string{"refuse unsolicited", "refuse bounce", "refuse low_port", "refuse low_port", "refuse low_port",
			"refuse epsv_all", "refuse epsv_all", "refuse unsolicited", "passive 10.0.0.11:6446"},
	},
	{
		name: "multi-line 227 and long lines",
		turns: []turn{
			c(pasvCmd), s("227-Entering Passive Mode\r\n227-" + strings.Repeat("-", 600) + "(10,0,0,11,1,1)\r\n" +
				"  (10,0,0,11,156,64)\r\n227 Done (10,0,0,11,156,65)\r\n"),
			c("SITE " + strings.Repeat("y", 1000) + "\r\n"), s("500 " + strings.Repeat("z", 1000) + "\r\n"),
			c(pasvCmd), s("227-" + strings.Repeat("-", 600) + "\r\n227 Entering Passive Mode (10,0,0,11,156,66).\r\n"),
		},
		log: []string{"passive 10.0.0.11:40000", "passive 10.0.0.11:40002"},
	},
}

// TestTranscripts feeds whole control connections split in every way and
// checks that what the helper does does not depend on the splitting.
func TestTranscripts(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, tc := range transcripts {
		t.Run(tc.name, func(t *testing.T) {
			s, p := tc.defaults()
			wantClient, wantServer, wantLog, m := run(t, s, p, tc.port, tc.turns, nil)
			if !slices.Equal(wantLog, tc.log) {
				t.Errorf("log = %q, want %q", wantLog, tc.log)
			}
			if m.stopped != tc.stop {
				t.Errorf("stopped = %v, want %v", m.stopped, tc.stop)
			}
			sentClient, sentServer := tc.streams()
			if tc.client != "" {
				sentClient = tc.client // refused commands lose their verb
			}
			if wantClient != sentClient {
				t.Errorf("client stream changed:\n got %q\nsent %q", wantClient, sentClient)
			}
			if len(wantServer) != len(sentServer) && tc.name != "multi-line 227 and long lines" {
				t.Errorf("server stream changed length:\n got %q\nsent %q", wantServer, sentServer)
			}
			total := len(sentClient) + len(sentServer)
			check := func(how string, cuts []int) {
				t.Helper()
				client, server, log, _ := run(t, s, p, tc.port, tc.turns, cuts)
				if client != wantClient || server != wantServer || !slices.Equal(log, wantLog) {
					t.Fatalf("%s (cuts %v):\nclient %q\nserver %q\nlog %q\nunsplit:\nclient %q\nserver %q\nlog %q",
						how, cuts, client, server, log, wantClient, wantServer, wantLog)
				}
			}
			for i := 1; i < total; i++ {
				check("split once", []int{i})
			}
			every := make([]int, total)
			for i := range every {
				every[i] = i + 1
			}
			check("byte by byte", every)
			for range 200 {
				var cuts []int
				for i := rng.IntN(20); i < total; i += 1 + rng.IntN(40) {
					cuts = append(cuts, i)
				}
				check("random", cuts)
			}
		})
	}
}

// TestCasesSplit runs the focused cases split in every way too.
func TestCasesSplit(t *testing.T) {
	for _, tc := range cases {
		s, p := tc.defaults()
		wantClient, wantServer, wantLog, _ := run(t, s, p, tc.port, tc.turns, nil)
		sentClient, sentServer := tc.streams()
		total := len(sentClient) + len(sentServer)
		every := make([]int, total)
		for i := range every {
			every[i] = i + 1
		}
		splits := [][]int{every}
		for i := 1; i < total; i++ {
			splits = append(splits, []int{i})
		}
		for _, cuts := range splits {
			client, server, log, _ := run(t, s, p, tc.port, tc.turns, cuts)
			if client != wantClient || server != wantServer || !slices.Equal(log, wantLog) {
				t.Fatalf("%s, cuts %v:\nclient %q\nserver %q\nlog %q\nunsplit:\nclient %q\nserver %q\nlog %q",
					tc.name, cuts, client, server, log, wantClient, wantServer, wantLog)
			}
		}
	}
}

// TestCarry checks what is carried and held for incomplete lines.
func TestCarry(t *testing.T) {
	for _, tc := range []struct {
		dir         ipvs.Direction
		prior       string // client commands first
		data        string
		carry, hold int
	}{
		{ipvs.FromClient, "", "PO", 2, 2},                 // a refused PORT loses its verb
		{ipvs.FromClient, "", "USER x\r\nport 1,2", 8, 8}, // and its arguments may be rewritten behind SNAT
		{ipvs.FromClient, "", "pasv\r", 5, 0},
		{ipvs.FromClient, "", "PASS secret", 0, 0},
		{ipvs.FromClient, "", "AUTH", 4, 0},
		{ipvs.FromServer, "", "22", 2, 0},
		{ipvs.FromServer, "", "227 Entering", 12, 8},
		{ipvs.FromServer, "", "227-Entering", 12, 8},
		{ipvs.FromServer, "", "229 Entering", 12, 8},
		{ipvs.FromServer, "", "200 Switching", 0, 0},
		{ipvs.FromServer, "", "234 AUTH", 0, 0},
		{ipvs.FromServer, "AUTH TLS\r\n", "234 AUTH", 8, 0},
		{ipvs.FromServer, "", "227\r", 4, 0},
		{ipvs.FromServer, "", "ab", 0, 0},
		{ipvs.FromServer, "", "227-x\r\n 10,0", 5, 5},
		{ipvs.FromServer, "", "227-x\r\n227 (1", 6, 2},
		{ipvs.FromServer, "", "227-(10,0,0,11,4,1)\r\n 10,0", 0, 0},
		{ipvs.FromServer, "", "227-(10,0,0,11,4,1)\r\n22", 2, 0},
		{ipvs.FromServer, "", "211-x\r\n227 (10,0,0,11,4,1", 0, 0},
		{ipvs.FromServer, "", "211-x\r\n21", 2, 0},
		{ipvs.FromServer, "", "211-x\r\n211\r", 4, 0},
		{ipvs.FromServer, "", "211-x\r\n22", 0, 0},
		{ipvs.FromServer, "", "227 " + strings.Repeat(" ", ipvs.MaxCarry-4), ipvs.MaxCarry, ipvs.MaxCarry - 4},
		{ipvs.FromServer, "", "227 " + strings.Repeat(" ", ipvs.MaxCarry-3), 0, 0},
	} {
		h := Helper{}.Bind(&session4, &noPolicy)
		var r ipvs.Result
		if tc.prior != "" {
			h.Inspect(ipvs.FromClient, []byte(tc.prior), 0, false, &r)
		}
		r.Reset()
		h.Inspect(tc.dir, []byte(tc.data), 0, false, &r)
		if r.Carry != tc.carry || r.Hold != tc.hold {
			t.Errorf("%v %q: Carry %d, Hold %d; want %d, %d", tc.dir, tc.data, r.Carry, r.Hold, tc.carry, tc.hold)
		}
		r.Reset()
		h = Helper{}.Bind(&session4, &noPolicy)
		h.Inspect(tc.dir, []byte(tc.data), 0, true, &r)
		if r.Carry != 0 || r.Hold != 0 {
			t.Errorf("%v %q with fin: Carry %d, Hold %d", tc.dir, tc.data, r.Carry, r.Hold)
		}
	}
}

// TestResync checks that an incomplete line too long to carry is skipped
// and that the next call reads from the next line on.
func TestResync(t *testing.T) {
	h := Helper{}.Bind(&session4, &noPolicy)
	rec := recorder{}
	var r ipvs.Result
	rec.r, rec.vip, r.Opener = &r, session4.VIP.Addr(), &rec
	long := "PORT 203,0,113,2,156,64" + strings.Repeat(" ", ipvs.MaxCarry)
	h.Inspect(ipvs.FromClient, []byte(long), 0, false, &r)
	if r.Carry != 0 || rec.opens != 0 {
		t.Fatalf("long line: Carry %d, %d opens", r.Carry, rec.opens)
	}
	r.Reset()
	// The rest of the long line looks like a command: it must be skipped.
	h.Inspect(ipvs.FromClient, []byte("PORT 203,0,113,2,156,65\r\nPORT 203,0,113,2,156,66\r\n"), 0, false, &r)
	rec.flush()
	if want := []string{"active 203.0.113.2:40002"}; !slices.Equal(rec.log, want) {
		t.Fatalf("log %q, want %q", rec.log, want)
	}
}

// TestFixed checks that bytes already delivered are never edited: a core
// that did not hold what the helper asked it to hold loses the rewrite
// rather than a corrupt stream.
func TestFixed(t *testing.T) {
	line := "227 Entering Passive Mode (10,0,0,11,156,64).\r\n"
	for fixed := 0; fixed <= len(line); fixed++ {
		h := Helper{}.Bind(&session4, &noPolicy)
		rec := recorder{}
		var r ipvs.Result
		rec.r, rec.vip, r.Opener = &r, session4.VIP.Addr(), &rec
		h.Inspect(ipvs.FromClient, []byte(pasvCmd), 0, false, &r)
		r.Reset()
		h.Inspect(ipvs.FromServer, []byte(line), fixed, false, &r)
		for _, e := range r.Edits {
			if e.Off < fixed {
				t.Fatalf("fixed %d: edit at %d", fixed, e.Off)
			}
		}
		got := string(apply([]byte(line), &r))
		want := "227 Entering Passive  (198,51,100,10,156,64).\r\n"
		switch {
		case fixed > strings.Index(line, "1"):
			want = line // the numbers were delivered: no channel
			if rec.opens != 0 {
				t.Errorf("fixed %d: channel opened", fixed)
			}
		case fixed > strings.Index(line, "(")-4:
			want = "227 Entering Passive Mode (198,51,100,10,156,64).\r\n"
		case fixed > strings.Index(line, "(")-5:
			// The space before "(" cannot be kept.
			want = "227 Entering Passive M(198,51,100,10,156,64).\r\n"
		}
		if got != want {
			t.Errorf("fixed %d: %q, want %q", fixed, got, want)
		}
	}
}

func TestOpenerRefuses(t *testing.T) {
	m := newSim(t, &session4, &noPolicy)
	m.rec.refuse = true
	m.feed(ipvs.FromClient, []byte(pasvCmd), false)
	in := "227 Entering Passive Mode (10,0,0,11,156,64).\r\n"
	m.feed(ipvs.FromServer, []byte(in), false)
	// No VIP port to be had: the real server's address must not reach
	// the client, which is told what it understands instead.
	if out, want := string(m.dir[ipvs.FromServer].out), noReply+"\r\n"; out != want {
		t.Errorf("refused channel: %q rewritten to %q, want %q", in, out, want)
	}
	if got := strings.Join(m.rec.log, "; "); !strings.Contains(got, "refuse no_port") {
		t.Errorf("log %q: no no_port refusal", got)
	}
	// Without an opener nothing is opened, and nothing panics.
	h := Helper{}.Bind(&session4, nil)
	var r ipvs.Result
	h.Inspect(ipvs.FromClient, []byte("PASV\r\nPORT 203,0,113,2,156,64\r\n"), 0, false, &r)
	h.Inspect(ipvs.FromServer, []byte(in), 0, false, &r)
	if len(r.Edits) != 0 {
		t.Errorf("edits without an opener: %+v", r.Edits)
	}
	// Nor does a nil session, or a bad direction.
	h = Helper{}.Bind(nil, nil)
	h.Inspect(ipvs.FromClient, []byte("PASV\r\nPORT 203,0,113,2,156,64\r\n"), 0, false, &r)
	h.Inspect(ipvs.FromServer, []byte(in), -5, false, &r)
	h.Inspect(7, []byte(in), 100, false, &r)
}

// quietResult returns a Result with a quiet recorder, grown as Inspect
// will need it.
func quietResult() *ipvs.Result {
	r := &ipvs.Result{}
	rec := &recorder{r: r, quiet: true, vip: session4.VIP.Addr()}
	r.Opener = rec
	r.Replace(0, 0, make([]byte, 256))
	r.Replace(0, 0, nil)
	r.Replace(0, 0, nil)
	r.Refuse(0)
	r.Reset()
	return r
}

type inspection struct {
	dir         ipvs.Direction
	data        []byte
	fixed       int
	pasv, edits int
}

// split227 is a 227 reply in two segments, as the core presents them.
func split227() []inspection {
	line := "227 Entering Passive Mode (10,0,0,11,156,64).\r\n"
	half := len(line) / 2
	h := Helper{}.Bind(&session4, &noPolicy)
	r := quietResult()
	h.(*conn).pasv = 1
	h.Inspect(ipvs.FromServer, []byte(line[:half]), 0, false, r)
	if r.Carry != half || r.Hold != half-4 {
		panic("split227: unexpected carry")
	}
	return []inspection{
		{ipvs.FromServer, []byte(line[:half]), 0, 1, 0},
		{ipvs.FromServer, []byte(line), 4, 0, 2},
	}
}

var allocCases = map[string][]inspection{
	"227":      {{ipvs.FromServer, []byte("227 Entering Passive Mode (10,0,0,11,156,64).\r\n"), 0, 1, 2}},
	"229":      {{ipvs.FromServer, []byte("229 Entering Extended Passive Mode (|||6446|)\r\n"), 0, 0, 0}},
	"PORT":     {{ipvs.FromClient, []byte("PORT 203,0,113,2,156,64\r\n"), 0, 0, 0}},
	"EPRT":     {{ipvs.FromClient, []byte("EPRT |1|203.0.113.2|40000|\r\n"), 0, 0, 0}},
	"bounce":   {{ipvs.FromClient, []byte("PORT 10,0,0,12,156,64\r\n"), 0, 0, 0}},
	"split227": split227(),
}

func (in inspection) run(h ipvs.ConnHelper, r *ipvs.Result) {
	c := h.(*conn)
	c.pasv += uint16(in.pasv)
	c.epsv = 1
	r.Reset()
	h.Inspect(in.dir, in.data, in.fixed, false, r)
}

func TestInspectAllocs(t *testing.T) {
	for name, seq := range allocCases {
		h := Helper{}.Bind(&session4, &noPolicy)
		r := quietResult()
		rec := r.Opener.(*recorder)
		n := testing.AllocsPerRun(100, func() {
			for _, in := range seq {
				in.run(h, r)
			}
		})
		if n != 0 {
			t.Errorf("%s: %v allocations per Inspect, want 0", name, n)
		}
		if last := seq[len(seq)-1]; len(r.Edits) != last.edits || (rec.opens == 0) != (name == "bounce") {
			t.Errorf("%s: %d edits, want %d; %d opens", name, len(r.Edits), last.edits, rec.opens)
		}
	}
}

func benchmarkInspect(b *testing.B, seq []inspection) {
	h := Helper{}.Bind(&session4, &noPolicy)
	r := quietResult()
	rec := r.Opener.(*recorder)
	n := 0
	for _, in := range seq {
		n += len(in.data)
	}
	b.ReportAllocs()
	b.SetBytes(int64(n))
	for b.Loop() {
		for _, in := range seq {
			in.run(h, r)
		}
	}
	if rec.opens == 0 || len(r.Edits) != seq[len(seq)-1].edits {
		b.Fatalf("%d opens, %d edits", rec.opens, len(r.Edits))
	}
}

func BenchmarkInspect227(b *testing.B)      { benchmarkInspect(b, allocCases["227"]) }
func BenchmarkInspectPORT(b *testing.B)     { benchmarkInspect(b, allocCases["PORT"]) }
func BenchmarkInspectSplit227(b *testing.B) { benchmarkInspect(b, allocCases["split227"]) }

// TestStateSaveLoad: a connection bound afresh and loaded with another's
// saved state goes on as that one would: a 227 to a PASV the first saw is
// rewritten, and the word survives a second round trip unchanged.
func TestStateSaveLoad(t *testing.T) {
	h := Helper{}.Bind(&session4, &noPolicy)
	r := quietResult()
	h.Inspect(ipvs.FromClient, []byte("AUTH XYZ\r\nPASV\r\nEPSV\r\nPASV\r\n"), 0, false, r)
	h.Inspect(ipvs.FromServer, []byte("504 no\r\n230-multi\r\n"), 0, false, r)
	w := h.(ipvs.StateSaver).SaveState()
	if w == 0 {
		t.Fatal("state of a connection with pending commands saved as zero")
	}
	h2 := Helper{}.Bind(&session4, &noPolicy)
	h2.(ipvs.StateSaver).LoadState(w)
	if w2 := h2.(ipvs.StateSaver).SaveState(); w2 != w {
		t.Fatalf("round trip %#x -> %#x", w, w2)
	}
	rec := recorder{}
	var res ipvs.Result
	rec.r, rec.vip, res.Opener = &res, session4.VIP.Addr(), &rec
	h2.Inspect(ipvs.FromServer, []byte("230 end\r\n227 Entering Passive Mode (10,0,0,11,156,64).\r\n"), 0, false, &res)
	rec.flush()
	if n := len(res.Edits); n == 0 || !strings.Contains(string(res.Edits[n-1].New), "198,51,100,10") || !slices.Equal(rec.log, []string{"passive 10.0.0.11:40000"}) {
		t.Errorf("227 after LoadState: edits %+v, log %q", res.Edits, rec.log)
	}
	fresh := Helper{}.Bind(&session4, &noPolicy)
	if w := fresh.(ipvs.StateSaver).SaveState(); w != 0 {
		t.Errorf("a new connection's state is %#x, want 0", w)
	}
}

// TestNoPortReplies: a 227 or 229 whose channel gets no VIP port never
// reaches the client as an announcement, however it is cut; a PORT or EPRT
// whose channel gets no port on the translated address never reaches the
// server as one, whatever the policy.
func TestNoPortReplies(t *testing.T) {
	for _, c := range []struct {
		name, cmd string
		segs      []string
		want      string
	}{
		{"229", "EPSV\r\n", []string{"229 Entering Extended Passive Mode (|||40000|)\r\n"}, noReply + "\r\n"},
		// Cut after its code, which was delivered: its numbers go.
		{"227 split", pasvCmd, []string{"227 Entering Pass", "ive Mode (10,0,0,11,156,64).\r\n"},
			"227 Entering Passive Mode (0,0,0,0,0,0).\r\n"},
		{"229 split", "EPSV\r\n", []string{"229 Entering Ext", "ended Passive Mode (|||40000|)\r\n"},
			"229 Entering Extended Passive Mode (|||0|)\r\n"},
		{"227 multi-line", pasvCmd, []string{"227-Entering Passive Mode\r\n227-(10,0,0,11,156,64)\r\n227 Go\r\n"},
			"227-Entering Passive Mode\r\n227-(0,0,0,0,0,0)\r\n227 Go\r\n"},
	} {
		m := newSim(t, &session4, &noPolicy)
		m.rec.refuse = true
		m.feed(ipvs.FromClient, []byte(c.cmd), false)
		for _, seg := range c.segs {
			m.feed(ipvs.FromServer, []byte(seg), false)
		}
		if got := string(m.dir[ipvs.FromServer].out); got != c.want {
			t.Errorf("%s: client got %q, want %q", c.name, got, c.want)
		}
		if got := strings.Join(m.rec.log, "; "); !strings.Contains(got, "refuse no_port") {
			t.Errorf("%s: log %q: no no_port refusal", c.name, got)
		}
	}
	for _, cmd := range []string{"PORT 203,0,113,2,156,64\r\n", "EPRT |1|203.0.113.2|40000|\r\n"} {
		m := newSim(t, &session4, &noPolicy) // refused announcements are not blocked
		m.rec.refuse, m.rec.nat = true, netip.MustParseAddr("192.0.2.1")
		m.feed(ipvs.FromClient, []byte(cmd), false)
		if got, want := string(m.dir[ipvs.FromClient].out), neutralVerb+cmd[4:]; got != want {
			t.Errorf("server got %q, want %q", got, want)
		}
		if got := strings.Join(m.rec.log, "; "); !strings.HasSuffix(got, "refuse no_port") {
			t.Errorf("%q: log %q: no no_port refusal", cmd, got)
		}
	}
}
