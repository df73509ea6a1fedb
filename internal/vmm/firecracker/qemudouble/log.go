package qemudouble

import (
	"io"
	"log/slog"
	"net/http"

	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fakefc"
)

// logPrefix and jailerLogPrefix start every line the doubles log, so no one
// takes their stderr for Firecracker's or the jailer's.
const (
	logPrefix       = "mvm-test-double(firecracker): "
	jailerLogPrefix = "mvm-test-double(jailer): "
)

// prefixWriter puts prefix before each write; slog writes one whole line
// per record, under its own lock.
type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p prefixWriter) Write(b []byte) (int, error) {
	line := make([]byte, 0, len(p.prefix)+len(b))
	line = append(append(line, p.prefix...), b...)
	if _, err := p.w.Write(line); err != nil {
		return 0, err
	}
	return len(b), nil
}

func newLogger(w io.Writer, level slog.Level, id string) *slog.Logger {
	h := slog.NewTextHandler(prefixWriter{w, logPrefix}, &slog.HandlerOptions{Level: level})
	return slog.New(h).With("id", id)
}

// logRequest is the fake's request log: one line per API request. GETs are
// debug lines, since a caller waiting for the socket polls GET /.
func logRequest(log *slog.Logger) func(fakefc.Recorded) {
	return func(r fakefc.Recorded) {
		switch {
		case r.Status >= 400:
			log.Warn("api", "method", r.Method, "path", r.Path, "status", r.Status, "fault", r.Fault)
		case r.Method == http.MethodGet:
			log.Debug("api", "method", r.Method, "path", r.Path, "status", r.Status)
		default:
			log.Info("api", "method", r.Method, "path", r.Path, "status", r.Status)
		}
	}
}
