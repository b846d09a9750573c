package tftp

import "testing"

// TestHelperRequest: every read or write request opens its reply flow,
// a malformed one too (the server's ERROR comes from its transfer ID);
// other datagrams open nothing.
func TestHelperRequest(t *testing.T) {
	for _, tc := range []struct {
		name      string
		datagram  []byte
		reply     bool
		wantAbout string
	}{
		{"RRQ", packet(OpRRQ, "pxelinux.0", "octet", "blksize", "1468"), true, `RRQ "pxelinux.0" octet blksize=1468`},
		{"WRQ", packet(OpWRQ, "upload.bin", "octet"), true, `WRQ "upload.bin" octet`},
		{"malformed RRQ", []byte("\x00\x01no terminator"), true, "RRQ (malformed)"},
		{"DATA", []byte("\x00\x03\x00\x01data"), false, ""},
		{"empty", nil, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reply, about := Helper{}.Request(tc.datagram)
			if reply != tc.reply || about != tc.wantAbout {
				t.Errorf("Request = %v, %q; want %v, %q", reply, about, tc.reply, tc.wantAbout)
			}
		})
	}
}
