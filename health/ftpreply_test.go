package health

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadReply(t *testing.T) {
	for _, tc := range []struct {
		in       string
		code     int
		text     string
		err      error
		leftover string
	}{
		{in: "220 ready\r\nnext", code: 220, text: "ready", leftover: "next"},
		{in: "220\r\n", code: 220, text: ""},
		{in: "220 bare LF\n", code: 220, text: "bare LF"},
		{in: "220-Welcome\r\n  to the\r\n220-server\r\n220 ready\r\n", code: 220, text: "Welcome\n  to the\nserver\nready"},
		// A line with another code inside a multi-line reply is text.
		{in: "220-a\r\n230 b\r\n220 c\r\n", code: 220, text: "a\n230 b\nc"},
		{in: "230-a\r\n230-b\r\n", err: io.EOF},
		{in: "hello\r\n", err: errReply},
		{in: "22\r\n", err: errReply},
		{in: "620 x\r\n", err: errReply},
		{in: "220x\r\n", err: errReply},
		{in: "220 " + strings.Repeat("x", maxReplyLine) + "\r\n", err: errReply},
		{in: "220-" + strings.Repeat("x\r\n", maxReplyLines), err: errReply},
		{in: "", err: io.EOF},
		{in: "220 no line end", err: io.EOF},
	} {
		r := bufio.NewReaderSize(strings.NewReader(tc.in), maxReplyLine)
		code, text, err := readReply(r)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("%.40q: err %v, want %v", tc.in, err, tc.err)
			}
			continue
		}
		rest, _ := io.ReadAll(r)
		if err != nil || code != tc.code || text != tc.text || string(rest) != tc.leftover {
			t.Errorf("%q: %d %q %v, rest %q; want %d %q", tc.in, code, text, err, rest, tc.code, tc.text)
		}
	}
}

func TestParse227(t *testing.T) {
	for in, want := range map[string]int{
		"Entering Passive Mode (10,0,0,11,156,64).": 40000,
		"Entering Passive Mode 10,0,0,11,0,21":      21,
		"=127,0,0,1,255,255":                        65535,
		"Entering Passive Mode (10,0,0,11,0,0)":     -1,
		"Entering Passive Mode (10,0,0,11,256,1)":   -1,
		"Entering Passive Mode (10,0,0,11,1)":       -1,
		"Entering Passive Mode (10,0,0,11,1,)":      -1,
		"Entering Passive Mode":                     -1,
		"(1,2,3,4,00001,1)":                         -1,
	} {
		p, err := parse227(in)
		if want < 0 {
			if !errors.Is(err, errReply) {
				t.Errorf("%q: %d %v, want an error", in, p, err)
			}
		} else if err != nil || int(p) != want {
			t.Errorf("%q: %d %v, want %d", in, p, err, want)
		}
	}
}

func TestParse229(t *testing.T) {
	for in, want := range map[string]int{
		"Entering Extended Passive Mode (|||40000|)": 40000,
		"ok (!!!21!)":    21,
		"(|||65535|)":    65535,
		"(|||65536|)":    -1,
		"(|||0|)":        -1,
		"(|||40000)":     -1,
		"(||40000|)":     -1,
		"(|!|40000|)":    -1,
		"(111401)":       -1,
		"(|||1234567|)":  -1,
		"(|||4000|":      -1,
		"(   40000 )":    -1,
		"no parentheses": -1,
		"(":              -1,
		"(|||":           -1,
	} {
		p, err := parse229(in)
		if want < 0 {
			if !errors.Is(err, errReply) {
				t.Errorf("%q: %d %v, want an error", in, p, err)
			}
		} else if err != nil || int(p) != want {
			t.Errorf("%q: %d %v, want %d", in, p, err, want)
		}
	}
}
