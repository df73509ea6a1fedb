package link

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
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
	// Resync sends a fresh sync line at this interval until one is acknowledged. Use it
	// when the guest is known to be running (re-linking to a live agent, whose session
	// may swallow the first sync); leave it zero while the guest boots, where one sync
	// waits in the port until the agent opens it.
	Resync time.Duration
}

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
			t := time.NewTicker(opt.Resync)
			defer t.Stop()
			for {
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
	version, err := awaitAck(br, func(n string) bool {
		mu.Lock()
		defer mu.Unlock()
		return sent[n]
	})
	stop()
	close(stopResync)
	resync.Wait() // no sync line may follow the session's first frames
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
	return &Session{mux: mux, port: port, cw: cw, AgentVersion: version}, nil
}

func awaitAck(br *bufio.Reader, ours func(nonce string) bool) (string, error) {
	for {
		if err := scanFor(br, ackMarker); err != nil {
			return "", err
		}
		line, err := readLine(br)
		if err != nil {
			return "", err
		}
		got, version, err := ParseAck(line)
		if err != nil || !ours(got) {
			continue // a stale ack from an earlier host connection
		}
		return version, nil
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
