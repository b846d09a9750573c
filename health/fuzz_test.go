package health

import (
	"bufio"
	"strconv"
	"strings"
	"testing"
)

// FuzzReadReply: any bytes give a reply with a valid code, or an error;
// never a crash, never a reply longer than the limits allow.
func FuzzReadReply(f *testing.F) {
	for _, s := range []string{"220 ready\r\n", "220-a\r\nb\r\n220 c\r\n", "220-a\r\n220-b\r\n", "999 x\r\n", "220\n", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		code, text, err := readReply(bufio.NewReaderSize(strings.NewReader(in), maxReplyLine))
		if err != nil {
			return
		}
		if code < 100 || code > 599 || len(text) > len(in) {
			t.Fatalf("%q: code %d, text %q", in, code, text)
		}
		if !strings.HasPrefix(in, strconv.Itoa(code)) {
			t.Fatalf("%q: code %d is not its first line's", in, code)
		}
	})
}

// FuzzParse227: a port found is not 0, and reads back the same from the
// canonical form of the reply.
func FuzzParse227(f *testing.F) {
	for _, s := range []string{"Entering Passive Mode (10,0,0,11,156,64).", "1,2,3,4,0,0", "(", "9999999,"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		p, err := parse227(in)
		if err != nil {
			return
		}
		canon := "Entering Passive Mode (1,2,3,4," + strconv.Itoa(int(p>>8)) + "," + strconv.Itoa(int(p&0xff)) + ")."
		if q, err := parse227(canon); p == 0 || err != nil || q != p {
			t.Fatalf("%q: port %d; canonical %q: %d %v", in, p, canon, q, err)
		}
	})
}

// FuzzParse229: a port found appears in the text between delimiters.
func FuzzParse229(f *testing.F) {
	for _, s := range []string{"Entering Extended Passive Mode (|||40000|)", "(!!!1!)", "(|||", "((((("} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		p, err := parse229(in)
		if err != nil {
			return
		}
		if p == 0 || !strings.Contains(in, strconv.Itoa(int(p))) {
			t.Fatalf("%q: port %d", in, p)
		}
	})
}
