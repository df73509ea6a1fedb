package link

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// Serve runs the guest end on a virtio-serial port until ctx ends: it acknowledges
// every host sync, starts a session when the host says go to one of them, and hands
// each stream of the session to handle. When a session ends (host gone, or garbage
// from a host that restarted) it goes back to waiting.
func Serve(ctx context.Context, port io.ReadWriter, version string, log *slog.Logger, handle func(net.Conn)) error {
	pr := &patientReader{ctx: ctx, r: port}
	br := bufio.NewReaderSize(pr, 64<<10)
	var wmu sync.Mutex // one write at a time on the port, across sessions
	writeLine := func(line string) error {
		wmu.Lock()
		defer wmu.Unlock()
		_, err := io.WriteString(port, line)
		return err
	}
	// Nonces acknowledged since the last session: a go for any of them starts one (the
	// host goes on the first ack it gets, which need not be the last we sent).
	acked := map[string]bool{}
	for {
		if err := scanFor(br, markerPrefix); err != nil {
			return err
		}
		line, err := readLine(br)
		if errors.Is(err, errLineTooLong) {
			continue // stale bytes that happened to look like a marker
		}
		if err != nil {
			return err
		}
		kind, nonce, err := ParseHostLine(line)
		if err != nil {
			logf(log, "link: ignoring a line", "err", err)
			continue
		}
		if kind == syncKind {
			if len(acked) >= maxAcked {
				clear(acked) // a host that syncs this often without going is gone
			}
			acked[nonce] = true
			if err := writeLine(ackMarker + nonce + " " + version + "\n"); err != nil {
				return err
			}
			continue
		}
		if !acked[nonce] {
			continue // a go for another guest's ack, or a stale one
		}
		clear(acked)
		// Nothing but the session follows this line: no ack is sent during a session.
		if err := writeLine(readyMarker + nonce + "\n"); err != nil {
			return err
		}
		pr.eofEndsSession.Store(true)
		w := &sessionWriter{mu: &wmu, w: port}
		cw := newCoalescingWriter(w)
		mux, err := yamux.Server(readerConn{r: br, w: cw}, yamuxConfig())
		if err != nil {
			cw.Close()
			return err
		}
		logf(log, "link: host connected")
		var acceptErr error
		for {
			c, err := mux.AcceptStream()
			if err != nil {
				acceptErr = err
				break
			}
			go handle(c)
		}
		mux.Close()
		cw.Close()
		w.close()
		pr.eofEndsSession.Store(false)
		logf(log, "link: host session ended", "err", acceptErr)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// maxAcked bounds the acks the agent remembers between sessions (see Dial's resyncs).
const maxAcked = 1024

// patientReader turns the port's "no host connected" EOFs into waiting, except while a
// session runs, where EOF means the host went away and ends the session.
type patientReader struct {
	ctx            context.Context
	r              io.Reader
	eofEndsSession atomic.Bool
}

func (p *patientReader) Read(b []byte) (int, error) {
	for {
		n, err := p.r.Read(b)
		if n > 0 || (err != nil && !errors.Is(err, io.EOF)) {
			return n, err
		}
		if p.eofEndsSession.CompareAndSwap(true, false) {
			return 0, io.EOF
		}
		select {
		case <-p.ctx.Done():
			return 0, p.ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// sessionWriter lets a dead session's sender finish at most the write it is blocked in;
// later writes fail, so nothing of it follows the next session's ack.
type sessionWriter struct {
	mu     *sync.Mutex
	w      io.Writer
	closed bool
	cmu    sync.Mutex
}

func (s *sessionWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cmu.Lock()
	closed := s.closed
	s.cmu.Unlock()
	if closed {
		return 0, net.ErrClosed
	}
	return s.w.Write(p)
}

func (s *sessionWriter) close() {
	s.cmu.Lock()
	s.closed = true
	s.cmu.Unlock()
}
