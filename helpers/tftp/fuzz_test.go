package tftp

import (
	"bytes"
	"reflect"
	"testing"
)

func FuzzParseRequest(f *testing.F) {
	for _, in := range realRequests {
		f.Add([]byte(in), 16)
	}
	f.Add(packet(OpRRQ, "a\x1b[2Jé\xff", "OCTET", "", "x"), 3)
	f.Add(packet(OpWRQ, "f", "mail", "blksize"), 0)
	f.Fuzz(func(t *testing.T, in []byte, max int) {
		r, err := ParseRequest(in)
		if err != nil {
			if !reflect.DeepEqual(r, Request{}) {
				t.Fatalf("ParseRequest(%q) = %+v with error %v", in, r, err)
			}
			return
		}
		if r.Op != OpRRQ && r.Op != OpWRQ || r.Filename == "" || len(r.Options) > MaxOptions {
			t.Fatalf("ParseRequest(%q) = %+v", in, r)
		}
		// The input is the request's encoding plus NUL padding.
		enc := encode(r)
		if !bytes.HasPrefix(in, enc) || len(bytes.Trim(in[len(enc):], "\x00")) != 0 {
			t.Fatalf("ParseRequest(%q) = %+v, which encodes as %q", in, r, enc)
		}
		if r2, err := ParseRequest(enc); err != nil || !reflect.DeepEqual(r2, r) {
			t.Fatalf("ParseRequest(%q) = %+v, but its encoding %q parses as %+v, %v", in, r, enc, r2, err)
		}
		checkPrintable(t, r.Summary(max))
	})
}

// FuzzSummary checks that no Request, parsed or not, summarizes to control
// characters.
func FuzzSummary(f *testing.F) {
	f.Add(uint16(1), "pxelinux.0", "octet", "blksize", "1468", 8)
	f.Add(uint16(9), "a\x00\n\x7f\u202e\xc3", "\t", "=", "\"\\", 1)
	f.Fuzz(func(t *testing.T, op uint16, filename, mode, name, value string, max int) {
		r := Request{Op: Op(op), Filename: filename, Mode: mode, Options: []Option{{name, value}, {value, name}}}
		checkPrintable(t, r.Summary(max))
	})
}
