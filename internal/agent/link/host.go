package link

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Session is the host end of a link: it opens agent streams.
type Session struct {
	mux          *yamux.Session
	port         net.Conn
	cw           *coalescingWriter
	AgentVersion string
}

// DialOptions tune Dial.
type DialOptions struct {
	// Resync sends a fresh sync line at this interval until one is acknowledged (after
	// 32 of them, once a second). Short when the guest is known to be running
	// (re-linking to a live agent, whose session may swallow the first sync); while
	// the guest boots, one sync waits in the port until the agent opens it, and a slow
	// resync only covers a lost one. Zero sends one sync.
	Resync time.Duration
	// NoProbe skips proving a resynced session with a ping before Dial returns: for
	// a caller whose first call does the same (and fails the same way) anyway.
	NoProbe bool
}

// Resync pacing for Dial: fastResyncs at opt.Resync, then one every slowResync.
const (
	fastResyncs = 32
	slowResync  = time.Second
)

// Dial syncs with the agent on a connected port and starts a session. It waits (as
// long as ctx allows) for the agent to answer, which under emulation can take the
// whole boot. The caller owns the port: it stays open when the session ends, so the
// caller can Dial on it again.
func Dial(ctx context.Context, port net.Conn, opt DialOptions) (*Session, error) {
	var mu sync.Mutex
	sent := map[string]bool{}
	sendSync := func() error {
		nb := make([]byte, nonceHex/2)
		if _, err := rand.Read(nb); err != nil {
			return fmt.Errorf("link nonce: %w", err)
		}
		nonce := hex.EncodeToString(nb)
		mu.Lock()
		sent[nonce] = true
		mu.Unlock()
		if _, err := io.WriteString(port, syncMarker+nonce+"\n"); err != nil {
			return fmt.Errorf("link: send sync: %w", err)
		}
		return nil
	}
	if err := sendSync(); err != nil {
		return nil, err
	}
	var resync sync.WaitGroup
	stopResync := make(chan struct{})
	if opt.Resync > 0 {
		resync.Add(1)
		go func() {
			defer resync.Done()
			// The agent remembers its last maxAcked acks and the go must name one of
			// them (the first ack read is for the oldest sync the agent saw): after a
			// burst of fast resyncs, slow down so a stalled guest never has more syncs
			// queued than it remembers, yet a swallowed sync is still followed by another.
			t := time.NewTicker(opt.Resync)
			defer t.Stop()
			for sent := 1; ; sent++ {
				if sent == fastResyncs && opt.Resync < slowResync {
					t.Reset(slowResync)
				}
				select {
				case <-t.C:
					if sendSync() != nil {
						return
					}
				case <-stopResync:
					return
				}
			}
		}()
	}
	stop := watchContext(ctx, port)
	br := bufio.NewReaderSize(port, 64<<10)
	nonce, version, err := awaitAck(br, func(n string) bool {
		mu.Lock()
		defer mu.Unlock()
		return sent[n]
	})
	close(stopResync)
	resync.Wait() // no sync line may follow the go
	if err == nil {
		// The agent skips everything up to our go, syncs it has not read yet
		// included, and answers it last, after any acks for them.
		if _, err = io.WriteString(port, goMarker+nonce+"\n"); err == nil {
			err = awaitLine(br, readyMarker, nonce)
		}
	}
	stop()
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("link: waiting for the agent: %w", ctx.Err())
		}
		return nil, fmt.Errorf("link: waiting for the agent: %w", err)
	}
	cw := newCoalescingWriter(port)
	mux, err := yamux.Client(readerConn{r: br, w: cw}, yamuxConfig())
	if err != nil {
		cw.Close()
		return nil, fmt.Errorf("link: start session: %w", err)
	}
	go func() {
		<-mux.CloseChan()
		cw.Close()
	}()
	s := &Session{mux: mux, port: port, cw: cw, AgentVersion: version}
	if opt.Resync > 0 && !opt.NoProbe {
		// A live agent's side is the uncertain one: prove the session carries
		// frames both ways before anyone relies on it (keepalives are off, so a
		// dead one would otherwise go unnoticed).
		if err := s.ping(ctx); err != nil {
			s.Close()
			return nil, fmt.Errorf("link: new session does not answer: %w", err)
		}
	}
	return s, nil
}

// ping waits for a yamux ping's answer, as long as ctx allows.
func (s *Session) ping(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() {
		_, err := s.mux.Ping()
		errc <- err
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		s.Close() // ends the ping
		<-errc
		return ctx.Err()
	}
}

// awaitAck waits for an ack of one of our syncs and returns its nonce and the agent's
// version.
func awaitAck(br *bufio.Reader, ours func(nonce string) bool) (nonce, version string, err error) {
	for {
		if err := scanFor(br, ackMarker); err != nil {
			return "", "", err
		}
		line, err := readLine(br)
		if errors.Is(err, errLineTooLong) {
			continue // stale bytes that happened to look like a marker
		}
		if err != nil {
			return "", "", err
		}
		got, version, err := ParseAck(line)
		if err != nil || !ours(got) {
			continue // a stale ack from an earlier host connection
		}
		return got, version, nil
	}
}

// awaitLine waits for marker followed by nonce, skipping everything else (acks of
// syncs the agent read after the one we go on).
func awaitLine(br *bufio.Reader, marker, nonce string) error {
	for {
		if err := scanFor(br, marker); err != nil {
			return err
		}
		line, err := readLine(br)
		if errors.Is(err, errLineTooLong) {
			continue
		}
		if err != nil {
			return err
		}
		if line == nonce {
			return nil
		}
	}
}

// Open opens a new stream to the agent.
func (s *Session) Open(ctx context.Context) (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := s.mux.OpenStream()
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("open agent stream: %w", r.err)
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// Done is closed when the session ends (the port closed or broke).
func (s *Session) Done() <-chan struct{} { return s.mux.CloseChan() }

// Close ends the session, leaving the port open. A read deadline in the past stops
// the session's reader (yamux waits for it), and is cleared again afterwards.
func (s *Session) Close() error {
	_ = s.port.SetReadDeadline(time.Unix(1, 0))
	err := s.mux.Close()
	_ = s.port.SetReadDeadline(time.Time{})
	// Nothing of this session may reach the port after it: the next Dial writes there.
	s.cw.closeAndWait(time.Second, func() { _ = s.port.SetWriteDeadline(time.Unix(1, 0)) })
	_ = s.port.SetWriteDeadline(time.Time{})
	return err
}
