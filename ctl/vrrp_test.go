package ctl

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// statusText is status as nfhelperctl status prints it.
func statusText(st *Status) string {
	var b bytes.Buffer
	WriteStatus(&b, st)
	return b.String()
}

// TestStatusVRRP: status reads the state file at each request and says
// the role, why it cannot, or nothing when no pair is configured.
func TestStatusVRRP(t *testing.T) {
	s, _ := testServer(t)
	path := filepath.Join(t.TempDir(), "vrrp-state")
	configured := false
	s.VRRPStateFile = func() (string, bool) { return path, configured }

	st := s.Status()
	if st.VRRP != nil || strings.Contains(statusText(&st), "vrrp") {
		t.Errorf("no file, no key: %+v\n%s", st.VRRP, statusText(&st))
	}
	configured = true
	st = s.Status()
	if v := st.VRRP; v == nil || v.State != VRRPUnknown || v.File != path {
		t.Fatalf("no file, key set: %+v", v)
	}
	if want := "\nvrrp:        unknown (no state file at " + path + ")\n"; !strings.Contains(statusText(&st), want) {
		t.Errorf("want %q in\n%s", want, statusText(&st))
	}

	since := time.Now().Add(-time.Minute).Truncate(time.Second).UTC()
	if err := os.WriteFile(path, []byte("MASTER G "+strconv.FormatInt(since.Unix(), 10)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, configured = range []bool{false, true} {
		st = s.Status()
		if v := st.VRRP; v == nil || *v != (VRRP{State: "MASTER", Name: "G", Since: since, File: path}) {
			t.Errorf("master (configured %v): %+v", configured, v)
		}
		if want := "\nvrrp:        MASTER (G, since " + since.Format(time.RFC3339) + ")\n"; !strings.Contains(statusText(&st), want) {
			t.Errorf("want %q in\n%s", want, statusText(&st))
		}
	}

	if err := os.WriteFile(path, []byte("MASTER G\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st = s.Status()
	if v := st.VRRP; v == nil || v.State != VRRPUnknown || !strings.Contains(v.Problem, "STATE NAME UNIX_TIME") {
		t.Errorf("bad file: %+v", v)
	}
	if !strings.Contains(statusText(&st), "\nvrrp:        unknown ("+path+": bad state file: want one line STATE NAME UNIX_TIME") {
		t.Errorf("bad file:\n%s", statusText(&st))
	}

	if err := os.WriteFile(path, []byte("BACKUP G 1000000000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st = s.Status()
	if v := st.VRRP; v == nil || v.State != VRRPUnknown || !strings.Contains(v.Problem, "before this boot") {
		t.Errorf("stale file: %+v", v)
	}
}

// TestStatusVRRPJSON: the vrrp field survives status --json's round trip;
// an older daemon's status (none) decodes and prints no vrrp row; an older
// client reads a new status.
func TestStatusVRRPJSON(t *testing.T) {
	s, _ := testServer(t)
	path := filepath.Join(t.TempDir(), "vrrp-state")
	since := time.Now().UTC().Truncate(time.Second)
	if err := os.WriteFile(path, []byte("BACKUP G "+strconv.FormatInt(since.Unix(), 10)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.VRRPStateFile = func() (string, bool) { return path, true }
	st := s.Status()
	data, err := json.Marshal(&st)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte(`"vrrp":{"state":"BACKUP","name":"G","since":"`+since.Format(time.RFC3339)+`","file":"`+path+`"}`)) {
		t.Errorf("json: %s", data)
	}
	var back Status
	if err := json.Unmarshal(data, &back); err != nil || back.VRRP == nil || *back.VRRP != *st.VRRP {
		t.Errorf("round trip: %+v, %v; sent %+v", back.VRRP, err, st.VRRP)
	}

	old := `{"pid": 1, "started": "2026-01-02T03:04:05Z", "datapath": "compat", "queues": {"first": 100, "count": 1}, "stats": {}}`
	var prev Status
	if err := json.Unmarshal([]byte(old), &prev); err != nil || prev.VRRP != nil {
		t.Fatalf("older daemon's status: %+v, %v", prev.VRRP, err)
	}
	if out := statusText(&prev); strings.Contains(out, "vrrp") {
		t.Errorf("older daemon's status printed with a vrrp row:\n%s", out)
	}

	var older struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal(data, &older); err != nil || older.Pid != st.Pid {
		t.Errorf("older client: %+v, %v", older, err)
	}
}
