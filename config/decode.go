package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// decode reads data into c strictly: every key must be known, every value
// of its field's type. It records each value's node in r, for validation to
// place its errors, and reports every problem it finds there. It returns
// false if there is nothing to validate: a syntax error, no document, or
// one that is not a mapping.
func decode(data []byte, c *Config, r *report) bool {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			r.addAt(nil, "", "the file is empty: no services and no helpers")
		} else {
			r.syntax(data, err)
		}
		return false
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		r.syntax(data, err)
	default:
		r.note(&next, "", "a second YAML document (after ---): the file holds one")
	}
	root := &doc
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		root = doc.Content[0]
	}
	r.root = root
	if isNull(root) {
		r.addAt(root, "", "the file is empty: no services and no helpers")
		return false
	}
	if root.Kind != yaml.MappingNode {
		r.addAt(root, "", "the file holds %s; want a mapping with services, helpers or queue", describe(root))
		return false
	}
	d := decoder{r: r, budget: 1 << 20}
	d.value(root, reflect.ValueOf(c).Elem(), "")
	return true
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntax reports a YAML syntax error at the line it names.
func (r *report) syntax(data []byte, err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 1
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
		lines := bytes.Split(data, []byte("\n"))
		if line >= 1 && line <= len(lines) && bytes.ContainsRune(lines[line-1], '\t') {
			msg += " (a tab? YAML indents with spaces only)"
		}
	}
	r.errs = append(r.errs, &Error{File: r.file, Line: line, Msg: "YAML syntax: " + msg})
}

type decoder struct {
	r      *report
	budget int // nodes left to visit: aliases can make a small file huge
}

var durationType = reflect.TypeFor[time.Duration]()

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// value decodes n into v; path is n's key path.
func (d *decoder) value(n *yaml.Node, v reflect.Value, path string) {
	if d.budget--; d.budget < 0 {
		if d.budget == -1 {
			d.r.addAt(n, path, "too many nodes (aliases expanding?)")
		}
		return
	}
	d.r.values[path] = n
	pos := n
	for depth := 0; n.Kind == yaml.AliasNode && n.Alias != nil; depth++ {
		if depth > 100 {
			d.r.addAt(pos, path, "alias chain too long")
			return
		}
		n = n.Alias
	}
	if isNull(n) {
		return // the zero value: absent
	}
	if v.Kind() == reflect.Pointer {
		p := reflect.New(v.Type().Elem())
		d.value(n, p.Elem(), path)
		v.Set(p)
		return
	}
	t := v.Type()
	switch {
	case t == durationType:
		d.duration(n, pos, v, path)
	case t.Kind() == reflect.Struct:
		d.mapping(n, pos, v, path)
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.r.addAt(pos, path, "want a list, got %s", describe(n))
			return
		}
		s := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, item := range n.Content {
			d.value(item, s.Index(i), index(path, i))
		}
		v.Set(s)
	case t.Kind() == reflect.String:
		if s, ok := d.scalar(n, pos, path, "a string"); ok {
			v.SetString(s)
		}
	case t.Kind() == reflect.Bool:
		if s, ok := d.scalar(n, pos, path, "true or false"); ok {
			var b bool
			if n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
				d.r.addAt(pos, path, "%q is not true or false", s)
				return
			}
			v.SetBool(b)
		}
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		d.integer(n, pos, v, path)
	default:
		panic(fmt.Sprintf("config: no decoding for %s", t))
	}
}

// duration decodes scalar n (pos: where it was written) into v.
func (d *decoder) duration(n, pos *yaml.Node, v reflect.Value, path string) {
	s, ok := d.scalar(n, pos, path, "a duration such as 300s")
	if !ok {
		return
	}
	dur, err := time.ParseDuration(s)
	switch {
	case err == nil:
		v.SetInt(int64(dur))
	case n.ShortTag() == "!!int" || n.ShortTag() == "!!float":
		d.r.addAt(pos, path, "%s is not a duration: give a unit, as %ss", s, s)
	default:
		d.r.addAt(pos, path, "%q is not a duration (as 300s, 5m or 1h30m)", s)
	}
}

// integer decodes scalar n (pos: where it was written) into v, an integer
// of any size, within its range.
func (d *decoder) integer(n, pos *yaml.Node, v reflect.Value, path string) {
	s, ok := d.scalar(n, pos, path, "an integer")
	if !ok {
		return
	}
	var i int64
	if n.ShortTag() != "!!int" || n.Decode(&i) != nil {
		d.r.addAt(pos, path, "%q is not an integer", s)
		return
	}
	lo, hi := intRange(v.Type())
	if i < lo || i > hi {
		d.r.addAt(pos, path, "%d out of %d..%d", i, lo, hi)
		return
	}
	if v.CanUint() {
		v.SetUint(uint64(i))
	} else {
		v.SetInt(i)
	}
}

// intRange is the range of integer type t a config value may take.
func intRange(t reflect.Type) (lo, hi int64) {
	bits := t.Bits()
	if t.Kind() >= reflect.Uint {
		if bits == 64 {
			return 0, math.MaxInt64
		}
		return 0, 1<<bits - 1
	}
	if bits == 64 {
		return math.MinInt64, math.MaxInt64
	}
	return -1 << (bits - 1), 1<<(bits-1) - 1
}

// scalar is the text of scalar n, or false (reported) if n is a mapping or
// a list.
func (d *decoder) scalar(n, pos *yaml.Node, path, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.r.addAt(pos, path, "want %s, got %s", want, describe(n))
		return "", false
	}
	return n.Value, true
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return strconv.Quote(n.Value)
	}
	return "nothing"
}

// field is where a key of a mapping goes.
type field struct {
	name  string
	index []int
}

// fields lists the keys struct type t takes, by yaml tag, inlined structs'
// keys included.
func fields(t reflect.Type) []field {
	var out []field
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if opts == "inline" {
			for _, g := range fields(f.Type) {
				out = append(out, field{g.name, append([]int{i}, g.index...)})
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out = append(out, field{name, []int{i}})
	}
	return out
}

// pair is one key: value of a mapping.
type pair struct{ key, value *yaml.Node }

// pairs lists mapping n's keys, those it merges (<<: *anchor) first so
// that its own override them.
func (d *decoder) pairs(n *yaml.Node, path string, depth int) []pair {
	var merged, own []pair
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!merge" {
			own = append(own, pair{k, v})
			continue
		}
		srcs := []*yaml.Node{v}
		if v.Kind == yaml.SequenceNode {
			srcs = v.Content
		}
		for _, src := range srcs {
			for src.Kind == yaml.AliasNode && src.Alias != nil && depth < 100 {
				src = src.Alias
				depth++
			}
			if src.Kind != yaml.MappingNode || depth >= 100 {
				d.r.addAt(k, path, "<< merges %s; want a mapping", describe(src))
				continue
			}
			merged = append(merged, d.pairs(src, path, depth+1)...)
		}
	}
	return append(merged, own...)
}

// mapping decodes mapping n into struct v.
func (d *decoder) mapping(n, pos *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.r.addAt(pos, path, "want a mapping (key: value), got %s", describe(n))
		return
	}
	fs := fields(v.Type())
	byName := map[string]*field{}
	for i := range fs {
		byName[fs[i].name] = &fs[i]
	}
	// A key written twice in n itself is an error (the first counts); keys
	// merged in are overridden by n's own.
	repeated := map[*yaml.Node]bool{}
	firstKey := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if k.Kind != yaml.ScalarNode || k.ShortTag() == "!!merge" {
			continue
		}
		if prev := firstKey[k.Value]; prev != nil {
			d.r.note(k, child(path, k.Value), "key repeated (first at line %d)", prev.Line)
			repeated[k] = true
			continue
		}
		firstKey[k.Value] = k
	}
	var pairs []pair
	for _, p := range d.pairs(n, path, 0) {
		if !repeated[p.key] {
			pairs = append(pairs, p)
		}
	}
	last := map[string]int{}
	for i, p := range pairs {
		if p.key.Kind == yaml.ScalarNode {
			last[p.key.Value] = i
		}
	}
	for i, p := range pairs {
		if p.key.Kind != yaml.ScalarNode {
			d.r.addAt(p.key, path, "a key is %s; want a name", describe(p.key))
			continue
		}
		name := p.key.Value
		kp := child(path, name)
		f := byName[name]
		if f == nil {
			if last[name] == i { // once per key
				d.r.addAt(p.key, kp, "unknown key%s", suggest(name, fs))
			}
			continue
		}
		if last[name] != i {
			continue // overridden
		}
		d.r.keys[kp] = p.key
		d.value(p.value, v.FieldByIndex(f.index), kp)
	}
}

// suggest names the key meant, or the keys there are.
func suggest(name string, fs []field) string {
	best, bestDist := "", 3
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = f.name
		if dist := editDistance(strings.ToLower(name), f.name); dist < bestDist {
			best, bestDist = f.name, dist
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %s?)", best)
	}
	return fmt.Sprintf(" (have %s)", strings.Join(names, ", "))
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
