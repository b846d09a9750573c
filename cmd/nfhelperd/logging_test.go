package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestJournalLogging(t *testing.T) {
	var b bytes.Buffer
	t.Setenv("JOURNAL_STREAM", "8:1234")
	log := newLogger(&b)
	log.Error("reload failed", "err", "x.yaml:3: bad")
	log.With("queue", 100).Warn("verdict")
	log.Info("ready", "datapath", "xt-nfqueue+nft-maps")
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	want := []string{
		`<3>level=ERROR msg="reload failed" err="x.yaml:3: bad"`,
		`<4>level=WARN msg=verdict queue=100`,
		`<6>level=INFO msg=ready datapath=xt-nfqueue+nft-maps`,
	}
	if len(lines) != len(want) {
		t.Fatalf("lines:\n%s", b.String())
	}
	for i := range want {
		if lines[i] != want[i] {
			t.Errorf("line %d: %q, want %q", i, lines[i], want[i])
		}
	}
}

func TestPlainLogging(t *testing.T) {
	var b bytes.Buffer
	t.Setenv("JOURNAL_STREAM", "")
	newLogger(&b).Info("ready")
	if !strings.HasPrefix(b.String(), "time=") {
		t.Errorf("without journald the time is kept: %q", b.String())
	}
}
