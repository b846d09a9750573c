package config

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// ErrInvalid wraps every validation failure.
var ErrInvalid = errors.New("invalid configuration")

// Error is one problem in a configuration file. Its text is
//
//	FILE:LINE:COLUMN: KEY.PATH: MESSAGE
//
// for example
//
//	nfhelperd.yaml:7:18: services[0].real_servers[1].address: "10.0.0.300:21" is not an address:port
//
// where the FILE prefix is left out for text given to [Parse], the column
// when it is unknown and the key path when the problem is the file as a
// whole. errors.Is(err, ErrInvalid) holds for every Error.
type Error struct {
	File   string // as given to Load; "" from Parse
	Line   int    // 1-based
	Column int    // 1-based; 0 if unknown
	Path   string // key path, as services[0].real_servers[1].address; "" for the whole file
	Msg    string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteByte(':')
	}
	b.WriteString(strconv.Itoa(e.Line))
	if e.Column > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Column))
	}
	b.WriteString(": ")
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap makes errors.Is(err, ErrInvalid) hold.
func (e *Error) Unwrap() error { return ErrInvalid }

// Errors is every problem found in a file, sorted by line and column, at
// least one. Its text has one Error a line. Parse and Load return it; use
// errors.As to get at it, or at the first *Error.
type Errors []*Error

func (l Errors) Error() string {
	lines := make([]string, len(l))
	for i, e := range l {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns each Error (each wraps ErrInvalid).
func (l Errors) Unwrap() []error {
	out := make([]error, len(l))
	for i, e := range l {
		out[i] = e
	}
	return out
}

// report collects the errors of one file, each placed at the node of the
// key path it concerns.
type report struct {
	file   string
	values map[string]*yaml.Node // key path -> its value node
	keys   map[string]*yaml.Node // key path -> its key node
	root   *yaml.Node            // the document's top node, if any
	errs   Errors
	seen   map[string]bool // key paths with an error already
}

func newReport(file string) *report {
	return &report{file: file, values: map[string]*yaml.Node{}, keys: map[string]*yaml.Node{}, seen: map[string]bool{}}
}

// addAt records an error at node n (its position only; nil for line 1)
// about the value at path. Errors about a value under one that has an error
// already are left out: they would follow from it.
func (r *report) addAt(n *yaml.Node, path, format string, args ...any) {
	if r.failed(path) {
		return
	}
	r.note(n, path, format, args...)
	if path != "" {
		r.seen[path] = true
	}
}

// note records an error as addAt does, without hiding those under path.
func (r *report) note(n *yaml.Node, path, format string, args ...any) {
	e := &Error{File: r.file, Line: 1, Path: path, Msg: fmt.Sprintf(format, args...)}
	if n != nil && n.Line > 0 {
		e.Line, e.Column = n.Line, n.Column
	}
	r.errs = append(r.errs, e)
}

// at records an error about the value at path, placed at that value or, if
// the key is absent, at the nearest enclosing value there is.
func (r *report) at(path, format string, args ...any) {
	r.addAt(r.node(path), path, format, args...)
}

// node is the value node at path or at its nearest ancestor.
func (r *report) node(path string) *yaml.Node {
	for p := path; p != ""; p = parent(p) {
		if n := r.values[p]; n != nil {
			return n
		}
	}
	return r.root
}

// line is the line of the value at path (or its nearest ancestor).
func (r *report) line(path string) int {
	if n := r.node(path); n != nil {
		return n.Line
	}
	return 1
}

// failed reports whether path or one enclosing it has an error already.
func (r *report) failed(path string) bool {
	for p := path; p != ""; p = parent(p) {
		if r.seen[p] {
			return true
		}
	}
	return false
}

// err is the collected errors sorted by position, or nil.
func (r *report) err() error {
	if len(r.errs) == 0 {
		return nil
	}
	slices.SortStableFunc(r.errs, func(a, b *Error) int {
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
	})
	return r.errs
}

// parent strips the last component off a key path: a.b[2] -> a.b -> a.
func parent(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

// child is the key path of key under path.
func child(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// index is the key path of item i of the list at path.
func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }
