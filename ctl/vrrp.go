package ctl

import (
	"errors"
	"fmt"
	"time"

	"github.com/nfhelper/nfhelper/vrrp"
)

// readVRRP is the state file at path as status shows it: nil when it does
// not exist and nobody configured it (no pair: nothing to tell), else the
// role or, for a missing, bad or stale file, VRRPUnknown and why. Never an
// error: status must answer whatever the file holds.
func readVRRP(path string, configured bool) *VRRP {
	st, err := vrrp.Read(path)
	switch {
	case errors.Is(err, vrrp.ErrNoStateFile) && !configured:
		return nil
	case err != nil:
		return &VRRP{State: VRRPUnknown, File: path, Problem: err.Error()}
	}
	return &VRRP{State: st.Role, Name: st.Name, Since: st.Since, File: path}
}

// vrrpLine is status's vrrp row: "MASTER (G, since 2026-12-07T19:40:01Z)",
// or "unknown (why)".
func vrrpLine(v *VRRP) string {
	switch {
	case v.Problem != "":
		return fmt.Sprintf("%s (%s)", v.State, v.Problem)
	case v.Since.IsZero():
		return v.State
	}
	return fmt.Sprintf("%s (%s, since %s)", v.State, v.Name, v.Since.UTC().Format(time.RFC3339))
}
