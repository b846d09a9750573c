package ctl

import "testing"

func TestConfigChecks(t *testing.T) {
	got := ConfigChecks("ecmp", []string{"a", "b"})
	if len(got) != 2 || got[0] != (Check{Name: "ecmp", Status: CheckWarn, Detail: "a"}) || got[1].Detail != "b" {
		t.Errorf("got %+v", got)
	}
	if got := ConfigChecks("ecmp", nil); len(got) != 0 {
		t.Errorf("no warnings gave %+v", got)
	}
}
