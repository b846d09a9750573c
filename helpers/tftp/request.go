package tftp

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Op is a TFTP opcode, the first two bytes of every datagram (big-endian).
type Op uint16

// The opcodes of RFC 1350, and OACK of RFC 2347.
const (
	OpRRQ   Op = 1
	OpWRQ   Op = 2
	OpDATA  Op = 3
	OpACK   Op = 4
	OpERROR Op = 5
	OpOACK  Op = 6
)

var opNames = [...]string{OpRRQ: "RRQ", OpWRQ: "WRQ", OpDATA: "DATA", OpACK: "ACK", OpERROR: "ERROR", OpOACK: "OACK"}

func (o Op) String() string {
	if int(o) < len(opNames) && opNames[o] != "" {
		return opNames[o]
	}
	return "op(" + strconv.Itoa(int(o)) + ")"
}

// OpOf returns the opcode of a UDP payload, or false if it is too short to
// have one.
func OpOf(datagram []byte) (Op, bool) {
	if len(datagram) < 2 {
		return 0, false
	}
	return Op(datagram[0])<<8 | Op(datagram[1]), true
}

// Limits on what ParseRequest accepts.
const (
	// MaxRequestLen is the largest UDP payload over IPv4. RFC 2347 wants a
	// request to fit 512 bytes, but servers read larger ones, so we do too.
	MaxRequestLen = 65507
	// MaxOptions bounds the work and memory one datagram can cost; real
	// clients send four at most.
	MaxOptions = 32
)

// Errors returned by ParseRequest; errors with more context wrap them.
var (
	ErrNotRequest     = errors.New("tftp: not a read or write request")
	ErrTruncated      = errors.New("tftp: request field lacks its NUL")
	ErrEmptyFilename  = errors.New("tftp: empty filename")
	ErrBadMode        = errors.New("tftp: unknown transfer mode")
	ErrOddOptions     = errors.New("tftp: options are not name/value pairs")
	ErrTooManyOptions = errors.New("tftp: too many options")
)

// Wrapped once here, not per call, so that refusing junk never allocates.
var (
	errShort     = fmt.Errorf("%w: shorter than an opcode", ErrNotRequest)
	errOpcode    = fmt.Errorf("%w: opcode is neither RRQ nor WRQ", ErrNotRequest)
	errLong      = fmt.Errorf("%w: longer than %d bytes", ErrNotRequest, MaxRequestLen)
	errFilename  = fmt.Errorf("%w: filename", ErrTruncated)
	errMode      = fmt.Errorf("%w: mode", ErrTruncated)
	errModeName  = fmt.Errorf("%w: not netascii, octet or mail", ErrBadMode)
	errNameNUL   = fmt.Errorf("%w: option name lacks its NUL", ErrOddOptions)
	errNoValue   = fmt.Errorf("%w: option name without a value", ErrOddOptions)
	errValueNUL  = fmt.Errorf("%w: option value lacks its NUL", ErrOddOptions)
	errEmptyName = fmt.Errorf("%w: empty option name before the end", ErrOddOptions)
	errOptions   = fmt.Errorf("%w: more than %d", ErrTooManyOptions, MaxOptions)
)

// Request is a read or write request.
type Request struct {
	Op       Op     // OpRRQ or OpWRQ
	Filename string // as sent: bytes, not necessarily UTF-8
	Mode     string // as sent, in the client's case
	Options  []Option
}

// Option is one request option, in the client's case.
type Option struct{ Name, Value string }

// ParseRequest parses an RRQ or WRQ datagram: the opcode, then the
// filename, the mode and zero or more option name/value pairs, each a
// NUL-terminated string. NUL bytes after the last pair are taken as padding,
// which some clients add.
//
// The strings share one copy of the datagram; errors do not allocate.
func ParseRequest(b []byte) (Request, error) {
	op, ok := OpOf(b)
	switch {
	case !ok:
		return Request{}, errShort
	case op != OpRRQ && op != OpWRQ:
		return Request{}, errOpcode
	case len(b) > MaxRequestLen:
		return Request{}, errLong
	}
	body := b[2:]
	file := bytes.IndexByte(body, 0)
	if file < 0 {
		return Request{}, errFilename
	}
	if file == 0 {
		return Request{}, ErrEmptyFilename
	}
	modeStart := file + 1
	mode := bytes.IndexByte(body[modeStart:], 0)
	if mode < 0 {
		return Request{}, errMode
	}
	if !knownMode(body[modeStart : modeStart+mode]) {
		return Request{}, errModeName
	}
	optStart := modeStart + mode + 1
	n, optLen, err := scanOptions(body[optStart:])
	if err != nil {
		return Request{}, err
	}

	// Checked in full first, so that only a good request allocates.
	s := string(body[:optStart+optLen])
	r := Request{Op: op, Filename: s[:file], Mode: s[modeStart : modeStart+mode]}
	if n > 0 {
		r.Options = make([]Option, n)
		opts := s[optStart:]
		for i := range r.Options {
			o := &r.Options[i]
			o.Name, opts, _ = strings.Cut(opts, "\x00")
			o.Value, opts, _ = strings.Cut(opts, "\x00")
		}
	}
	return r, nil
}

// scanOptions checks the name/value pairs at the start of b and returns how
// many there are and how many bytes they take; what follows is padding.
func scanOptions(b []byte) (n, length int, err error) {
	for {
		rest := b[length:]
		if onlyNULs(rest) {
			return n, length, nil
		}
		name := bytes.IndexByte(rest, 0)
		switch {
		case name < 0:
			return 0, 0, errNameNUL
		case name == 0:
			return 0, 0, errEmptyName
		}
		value := bytes.IndexByte(rest[name+1:], 0)
		switch {
		case value < 0 && name+1 == len(rest):
			return 0, 0, errNoValue
		case value < 0:
			return 0, 0, errValueNUL
		case n == MaxOptions:
			return 0, 0, errOptions
		}
		n++
		length += name + 1 + value + 1
	}
}

func onlyNULs(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// knownMode reports whether mode is one of RFC 1350's, in any case.
func knownMode(mode []byte) bool {
	return equalFoldASCII(mode, "netascii") || equalFoldASCII(mode, "octet") || equalFoldASCII(mode, "mail")
}

// Option returns the value of the first option named name, ignoring case.
func (r Request) Option(name string) (string, bool) {
	for _, o := range r.Options {
		if equalFoldASCII(o.Name, name) {
			return o.Value, true
		}
	}
	return "", false
}

// equalFoldASCII is strings.EqualFold for ASCII only: servers compare with
// strcasecmp, which, unlike Unicode folding, does not take "K" (U+212A
// KELVIN SIGN) for "k" in "blksize", and we want to read what they read.
func equalFoldASCII[T string | []byte](a T, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(b); i++ {
		if lower(a[i]) != lower(b[i]) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// Summary describes r on one line, e.g.
//
//	RRQ "pxelinux.0" octet blksize=1468 tsize=0
//
// with options in the order sent. The filename is quoted; the mode and the
// option names and values are quoted when they are not plain printable
// ASCII words. Every string is cut to max bytes (at a UTF-8 boundary where
// there is one), marked by "…" after it; max <= 0 means no limit. Whatever r
// holds, the result has no control characters.
func (r Request) Summary(max int) string {
	b := make([]byte, 0, 64)
	b = append(b, r.Op.String()...)
	b = append(b, ' ')
	b = appendQuoted(b, r.Filename, max)
	b = append(b, ' ')
	b = appendWord(b, r.Mode, max)
	for _, o := range r.Options {
		b = append(b, ' ')
		b = appendWord(b, o.Name, max)
		b = append(b, '=')
		b = appendWord(b, o.Value, max)
	}
	return string(b)
}

const ellipsis = "…"

func appendQuoted(b []byte, s string, max int) []byte {
	s, cut := truncate(s, max)
	b = strconv.AppendQuote(b, s)
	if cut {
		b = append(b, ellipsis...)
	}
	return b
}

// appendWord appends s as is if that cannot be misread, else quoted.
func appendWord(b []byte, s string, max int) []byte {
	if !isWord(s) {
		return appendQuoted(b, s, max)
	}
	s, cut := truncate(s, max)
	b = append(b, s...)
	if cut {
		b = append(b, ellipsis...)
	}
	return b
}

// isWord reports whether s is non-empty printable ASCII with nothing that
// would blur where it ends or make it look quoted.
func isWord(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == '"' || c == '\\' || c == '=' {
			return false
		}
	}
	return true
}

// truncate cuts s to at most max bytes, before a UTF-8 character that the
// cut would split, so that it does not show as escaped halves.
func truncate(s string, max int) (string, bool) {
	if max <= 0 || len(s) <= max {
		return s, false
	}
	i := max
	for j := max - 1; j >= 0 && j > max-utf8.UTFMax; j-- {
		if utf8.RuneStart(s[j]) {
			if _, size := utf8.DecodeRuneInString(s[j:]); j+size > max {
				i = j
			}
			break
		}
	}
	return s[:i], true
}
