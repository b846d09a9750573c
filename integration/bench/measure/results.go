package measure

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
)

// OutDir is the directory for a run's results: dir, created if need be, or
// where dir is "" a new temporary one named after prefix, so that a run
// never overwrites the results of another.
func OutDir(dir, prefix string) (string, error) {
	if dir == "" {
		return os.MkdirTemp("", prefix)
	}
	return dir, os.MkdirAll(dir, 0o755)
}

// WriteResults writes the report to dir/name.txt and the raw rows, one JSON
// object a line, to dir/name.jsonl: the report for reading, the rows to
// compare runs later by figures the report leaves out. It returns both
// paths.
func WriteResults[T any](dir, name, report string, rows []T) (txt, jsonl string, err error) {
	txt, jsonl = filepath.Join(dir, name+".txt"), filepath.Join(dir, name+".jsonl")
	err = os.WriteFile(txt, []byte(report), 0o644)
	var lines []byte
	for _, r := range rows {
		j, _ := json.Marshal(r)
		lines = append(append(lines, j...), '\n')
	}
	return txt, jsonl, errors.Join(err, os.WriteFile(jsonl, lines, 0o644))
}
