package ftp

import (
	"slices"
	"testing"

	"github.com/nfhelper/nfhelper/ipvs"
)

// TestAdopted: a connection taken up mid-stream (a backup router after a
// failover) resynchronises each direction on a line boundary, and treats a
// 227 or 229 nobody asked for on it as answering a PASV or EPSV sent
// before: rewritten to the VIP, its channel opened.
func TestAdopted(t *testing.T) {
	for _, tc := range []struct {
		name   string
		feeds  []turn
		server string
		log    []string
	}{{
		name:   "unsolicited 227 at a line start",
		feeds:  []turn{s("227 Entering Passive Mode (10,0,0,11,156,64).\r\n")},
		server: "227 Entering Passive  (198,51,100,10,156,64).\r\n",
		log:    []string{"passive 10.0.0.11:40000"},
	}, {
		name:   "unsolicited 229",
		feeds:  []turn{s("229 Entering Extended Passive Mode (|||40000|)\r\n")},
		server: "229 Entering Extended Passive Mode (|||40000|)\r\n",
		log:    []string{"passive 10.0.0.11:40000"},
	}, {
		name:   "first segment starts mid-line: skipped to its end",
		feeds:  []turn{s("7 (10,0,0,11,156,64)\r\n"), s("227 (10,0,0,11,156,65)\r\n")},
		server: "7 (10,0,0,11,156,64)\r\n227 (198,51,100,10,156,65)\r\n",
		log:    []string{"passive 10.0.0.11:40001"},
	}, {
		name:   "mid-line digits that look like no reply",
		feeds:  []turn{s("27 (10,0,0,11,156,64)\r\n")},
		server: "27 (10,0,0,11,156,64)\r\n",
	}, {
		name:   "a short first segment that may start a reply",
		feeds:  []turn{s("22"), s("7 (10,0,0,11,156,64)\r\n")},
		server: "227 (198,51,100,10,156,64)\r\n",
		log:    []string{"passive 10.0.0.11:40000"},
	}, {
		name:  "client: mid-line bytes skipped, then a command",
		feeds: []turn{c("3,0,113,2,156,64\r\nPORT 203,0,113,2,156,65\r\n")},
		log:   []string{"active 203.0.113.2:40001"},
	}, {
		name:  "client: a command at the first byte",
		feeds: []turn{c("PORT 203,0,113,2,156,64\r\n")},
		log:   []string{"active 203.0.113.2:40000"},
	}, {
		name:  "client: a bare command",
		feeds: []turn{c("PASV\r\n"), s("227 (10,0,0,11,156,64)\r\n"), s("227 (10,0,0,11,156,65)\r\n")},
		// The second is unsolicited: still taken, as after adoption
		// commands sent before are unknown.
		server: "227 (198,51,100,10,156,64)\r\n227 (198,51,100,10,156,65)\r\n",
		log:    []string{"passive 10.0.0.11:40000", "passive 10.0.0.11:40001"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			m := newSim(t, &session4, &noPolicy)
			m.h.(ipvs.Adoptable).Adopted()
			for _, f := range tc.feeds {
				m.feed(f.dir, []byte(f.text), false)
			}
			for i := range m.dir {
				m.release(&m.dir[i])
			}
			if got := string(m.dir[ipvs.FromServer].out); got != tc.server {
				t.Errorf("server stream %q, want %q", got, tc.server)
			}
			if !slices.Equal(m.rec.log, tc.log) {
				t.Errorf("log %q, want %q", m.rec.log, tc.log)
			}
		})
	}
}

// TestFollowedRefusesUnsolicited: a connection followed from its SYN keeps
// refusing a 227 nobody asked for.
func TestFollowedRefusesUnsolicited(t *testing.T) {
	m := newSim(t, &session4, &noPolicy)
	m.feed(ipvs.FromServer, []byte("227 (10,0,0,11,156,64)\r\n"), false)
	if want := []string{"refuse unsolicited"}; !slices.Equal(m.rec.log, want) {
		t.Errorf("log %q, want %q", m.rec.log, want)
	}
	if got := string(m.dir[ipvs.FromServer].out); got != "227 (10,0,0,11,156,64)\r\n" {
		t.Errorf("server stream %q", got)
	}
}

// TestAdoptedStateSaved: the adoption survives a restart (the kernel
// datapath keeps the state word with the connection).
func TestAdoptedStateSaved(t *testing.T) {
	h := Helper{}.Bind(&session4, &noPolicy)
	h.(ipvs.Adoptable).Adopted()
	w := h.(ipvs.StateSaver).SaveState()
	n := Helper{}.Bind(&session4, &noPolicy).(*conn)
	n.LoadState(w)
	if !n.adopted {
		t.Errorf("state word %#x lost the adoption", w)
	}
}
