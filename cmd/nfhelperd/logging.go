package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
)

// newLogger logs slog text lines to w. Under systemd (JOURNAL_STREAM set)
// each line starts with its syslog priority ("<3>" for errors), which
// journald turns into the entry's priority, and carries no time: the
// journal stamps entries itself.
func newLogger(w io.Writer) *slog.Logger {
	if os.Getenv("JOURNAL_STREAM") == "" {
		return slog.New(slog.NewTextHandler(w, nil))
	}
	return slog.New(&journalHandler{out: w, mu: new(sync.Mutex), buf: new(bytes.Buffer)})
}

type journalHandler struct {
	out   io.Writer
	mu    *sync.Mutex
	buf   *bytes.Buffer
	attrs []slog.Attr
	group string
}

func (h *journalHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf.Reset()
	h.buf.WriteString(priority(r.Level))
	inner := slog.Handler(slog.NewTextHandler(h.buf, &slog.HandlerOptions{ReplaceAttr: dropTime}))
	if h.group != "" {
		inner = inner.WithGroup(h.group)
	}
	if len(h.attrs) > 0 {
		inner = inner.WithAttrs(h.attrs)
	}
	if err := inner.Handle(ctx, r); err != nil {
		return err
	}
	_, err := h.out.Write(h.buf.Bytes())
	return err
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return &c
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.group = name
	return &c
}

func dropTime(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

// priority is the sd-daemon(3) prefix for a level.
func priority(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "<3>"
	case l >= slog.LevelWarn:
		return "<4>"
	case l >= slog.LevelInfo:
		return "<6>"
	}
	return "<7>"
}
