package qemudouble

import (
	"io"
	"log/slog"
	"net/http"

	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fakefc"
)

// logPrefix starts every line the double logs, so no one takes its stderr
// for Firecracker's.
const logPrefix = "mvm-test-double(firecracker): "

// prefixWriter puts logPrefix before each write; slog writes one whole
// line per record, under its own lock.
type prefixWriter struct{ w io.Writer }

func (p prefixWriter) Write(b []byte) (int, error) {
	line := make([]byte, 0, len(logPrefix)+len(b))
	line = append(append(line, logPrefix...), b...)
	if _, err := p.w.Write(line); err != nil {
		return 0, err
	}
	return len(b), nil
}

func newLogger(w io.Writer, level slog.Level, id string) *slog.Logger {
	h := slog.NewTextHandler(prefixWriter{w}, &slog.HandlerOptions{Level: level})
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
