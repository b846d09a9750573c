package kernel

import (
	"bytes"
	"testing"
)

func FuzzParseConntrack(f *testing.F) {
	f.Add([]byte{})
	b, _ := VerdictCT("nfh-ftp", HelperState{Flags: StateValid}.Encode())
	f.Add(b)
	m, _ := VerdictCTMark(1)
	f.Add(m)
	f.Fuzz(func(t *testing.T, b []byte) {
		ct, err := ParseConntrack(b)
		if err != nil {
			return
		}
		if len(ct.HelperInfo) > 0 && ct.Helper != "" && len(ct.Helper) <= HelperNameMax && len(ct.HelperInfo) <= PrivDataMax {
			// What parses re-encodes to something that parses the same.
			v, err := VerdictCT(ct.Helper, ct.HelperInfo)
			if err != nil {
				t.Fatal(err)
			}
			back, err := ParseConntrack(v)
			if err != nil || back.Helper != ct.Helper || !bytes.Equal(back.HelperInfo, ct.HelperInfo) {
				t.Fatalf("re-encoded %+v: %+v %v", ct, back, err)
			}
		}
	})
}

func FuzzParseHelper(f *testing.F) {
	b, _ := ftpHelper().encode(false)
	f.Add(b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseHelper(b)
		if err != nil || h.validate() != nil {
			return
		}
		e, err := h.encode(false)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := parseHelper(e); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzDecodeState(f *testing.F) {
	f.Add(HelperState{Flags: StateValid, Next: [2]uint32{1, 2}}.Encode())
	f.Add(make([]byte, StateLen))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeState(b)
		if err != nil {
			return
		}
		if got, err := DecodeState(s.Encode()); err != nil || got != s {
			t.Fatalf("%+v -> %+v %v", s, got, err)
		}
	})
}
