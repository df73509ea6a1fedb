package guest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// kmsgHandler writes log records to the kernel log (/dev/kmsg, so `dmesg` in the guest
// shows them) and, from Info up, to the serial console, which is what `mvmctl logs`
// shows. Under emulation every console byte is slow, so debug stays off the console.
type kmsgHandler struct {
	out   *logOutputs
	attrs []slog.Attr
}

// logOutputs are shared by every handler derived with WithAttrs.
type logOutputs struct {
	mu      sync.Mutex
	kmsg    io.Writer
	console io.Writer
}

// attachKmsg starts writing to the kernel log; PID 1 can only do so once devtmpfs is
// mounted (the initramfs has just /dev/console and /dev/null).
func (o *logOutputs) attachKmsg() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.kmsg != io.Discard {
		return
	}
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		o.kmsg = f
	}
}

func newLogger() (*slog.Logger, *logOutputs) {
	o := &logOutputs{kmsg: io.Discard, console: os.Stderr}
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		o.console = f
	}
	o.attachKmsg()
	return slog.New(&kmsgHandler{out: o}), o
}

func (h *kmsgHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelDebug }

func (h *kmsgHandler) Handle(_ context.Context, r slog.Record) error {
	var sb strings.Builder
	sb.WriteString(r.Message)
	add := func(a slog.Attr) bool {
		fmt.Fprintf(&sb, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	line := sb.String()
	prio := 6 // info
	switch {
	case r.Level >= slog.LevelError:
		prio = 3
	case r.Level >= slog.LevelWarn:
		prio = 4
	case r.Level < slog.LevelInfo:
		prio = 7
	}
	h.out.mu.Lock()
	defer h.out.mu.Unlock()
	fmt.Fprintf(h.out.kmsg, "<%d>mvm-agent: %s\n", prio, line)
	if r.Level >= slog.LevelInfo {
		fmt.Fprintf(h.out.console, "mvm-agent: %s\r\n", line)
	}
	return nil
}

func (h *kmsgHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return &c
}

func (h *kmsgHandler) WithGroup(string) slog.Handler { return h }
