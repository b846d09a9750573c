package config_test

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nfhelper/nfhelper/config"
)

var update = flag.Bool("update", false, "rewrite testdata/errors/*.golden from the current messages")

// TestErrorsGolden loads each testdata/errors/*.yaml and compares every
// error it yields with the .golden file beside it.
func TestErrorsGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/errors/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no cases: %v", err)
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".yaml")
		t.Run(name, func(t *testing.T) {
			_, err := config.Load(file)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, config.ErrInvalid) {
				t.Errorf("%v: not ErrInvalid", err)
			}
			var list config.Errors
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("%v: not config.Errors", err)
			}
			for i, e := range list {
				if e.File != file || e.Line < 1 {
					t.Errorf("error %d names %s:%d", i, e.File, e.Line)
				}
				if i > 0 && (e.Line < list[i-1].Line || e.Line == list[i-1].Line && e.Column < list[i-1].Column) {
					t.Errorf("error %d out of order", i)
				}
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(file, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./config/ -run Golden -update)", err)
			}
			if got != string(want) {
				t.Errorf("got\n%s\nwant\n%s", got, want)
			}
		})
	}
}
