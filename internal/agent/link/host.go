package link

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"

	"github.com/hashicorp/yamux"
)

// Session is the host end of a link: it opens agent streams.
type Session struct {
	mux          *yamux.Session
	AgentVersion string
}

// Dial syncs with the agent on a freshly connected port and starts the session. It
// waits (as long as ctx allows) for the guest to open its end, which under emulation
// takes the whole boot.
func Dial(ctx context.Context, port io.ReadWriteCloser) (*Session, error) {
	nb := make([]byte, nonceHex/2)
	if _, err := rand.Read(nb); err != nil {
		return nil, fmt.Errorf("link nonce: %w", err)
	}
	nonce := hex.EncodeToString(nb)
	if _, err := io.WriteString(port, syncMarker+nonce+"\n"); err != nil {
		return nil, fmt.Errorf("link: send sync: %w", err)
	}
	stop := watchContext(ctx, port)
	br := bufio.NewReaderSize(port, 64<<10)
	version, err := awaitAck(br, nonce)
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
		port.Close()
	}()
	return &Session{mux: mux, AgentVersion: version}, nil
}

func awaitAck(br *bufio.Reader, nonce string) (string, error) {
	for {
		if err := scanFor(br, ackMarker); err != nil {
			return "", err
		}
		line, err := readLine(br)
		if err != nil {
			return "", err
		}
		got, version, err := ParseAck(line)
		if err != nil || got != nonce {
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

// Close ends the session and closes the port.
func (s *Session) Close() error { return s.mux.Close() }
