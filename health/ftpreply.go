package health

import (
	"bufio"
	"errors"
	"fmt"
	"strings"
)

// Reply limits: a server that sends more is broken, not slow.
const (
	maxReplyLine  = 4096
	maxReplyLines = 256
)

var errReply = errors.New("malformed reply")

// readReply reads one FTP reply (RFC 959 4.2): "ddd text", or "ddd-text",
// any lines, and a last line "ddd text" with the same code. text is the
// reply's lines without their codes and line ends, joined by "\n".
func readReply(r *bufio.Reader) (code int, text string, err error) {
	var b strings.Builder
	for n := 0; n < maxReplyLines; n++ {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return 0, "", fmt.Errorf("%w: line longer than %d bytes", errReply, maxReplyLine)
		}
		if err != nil {
			return 0, "", err
		}
		l := strings.TrimRight(string(line), "\r\n")
		c, sep, ok := replyCode(l)
		if n == 0 {
			if !ok {
				return 0, "", fmt.Errorf("%w: %q", errReply, l)
			}
			code = c
		} else {
			b.WriteByte('\n')
		}
		if ok && c == code && sep != '-' {
			b.WriteString(l[min(len(l), 4):])
			return code, b.String(), nil
		}
		if ok && c == code {
			l = l[4:]
		}
		b.WriteString(l)
	}
	return 0, "", fmt.Errorf("%w: more than %d lines", errReply, maxReplyLines)
}

// replyCode parses a line's leading code: three digits, the first 1-5,
// then ' ', '-' or the line's end (sep 0).
func replyCode(l string) (code int, sep byte, ok bool) {
	if len(l) < 3 || l[0] < '1' || l[0] > '5' || !digit(l[1]) || !digit(l[2]) {
		return 0, 0, false
	}
	if len(l) > 3 {
		sep = l[3]
		if sep != ' ' && sep != '-' {
			return 0, 0, false
		}
	}
	return int(l[0]-'0')*100 + int(l[1]-'0')*10 + int(l[2]-'0'), sep, true
}

func digit(c byte) bool { return c >= '0' && c <= '9' }

// parse227 finds the port in a PASV reply's text: six comma-separated
// numbers from the first digit on, as curl reads them ("Entering Passive
// Mode (h1,h2,h3,h4,p1,p2)", with or without the parentheses). The
// address is ignored: the data channel goes to the checked server.
func parse227(text string) (uint16, error) {
	i := strings.IndexFunc(text, func(r rune) bool { return r >= '0' && r <= '9' })
	if i < 0 {
		return 0, fmt.Errorf("%w: no numbers in 227 %q", errReply, text)
	}
	var n [6]int
	s := text[i:]
	for k := range n {
		if k > 0 {
			if s == "" || s[0] != ',' {
				return 0, fmt.Errorf("%w: 227 %q", errReply, text)
			}
			s = s[1:]
		}
		j := 0
		for j < len(s) && j < 4 && digit(s[j]) {
			n[k] = n[k]*10 + int(s[j]-'0')
			j++
		}
		if j == 0 || n[k] > 255 {
			return 0, fmt.Errorf("%w: 227 %q", errReply, text)
		}
		s = s[j:]
	}
	return port(n[4]*256 + n[5])
}

// parse229 finds the port in an EPSV reply's text (RFC 2428):
// "(<d><d><d>port<d>)" with any delimiter d from '!' to '~'.
func parse229(text string) (uint16, error) {
	i := strings.IndexByte(text, '(')
	if i < 0 || len(text) < i+4 {
		return 0, fmt.Errorf("%w: 229 %q", errReply, text)
	}
	s := text[i+1:]
	d := s[0]
	if d < '!' || d > '~' || digit(d) || s[1] != d || s[2] != d {
		return 0, fmt.Errorf("%w: 229 %q", errReply, text)
	}
	s = s[3:]
	p, j := 0, 0
	for j < len(s) && j < 6 && digit(s[j]) {
		p = p*10 + int(s[j]-'0')
		j++
	}
	if j == 0 || len(s) < j+2 || s[j] != d || s[j+1] != ')' {
		return 0, fmt.Errorf("%w: 229 %q", errReply, text)
	}
	return port(p)
}

func port(p int) (uint16, error) {
	if p < 1 || p > 65535 {
		return 0, fmt.Errorf("%w: port %d", errReply, p)
	}
	return uint16(p), nil
}
