// Package client is the host side of the agent protocol. It reaches the agent through
// a Unix socket speaking the hybrid-vsock handshake ("CONNECT <port>\n" -> "OK ...\n"),
// which Firecracker provides natively and mvm's supervisor provides for QEMU, so there
// is one code path for every backend.
package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/proto"
)

// DialHybrid connects to a hybrid-vsock Unix socket and asks for a guest port.
func DialHybrid(ctx context.Context, socketPath string, port uint32) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("connect to agent socket: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		c.Close()
		return nil, fmt.Errorf("agent socket handshake: %w", err)
	}
	// Read the reply byte by byte: whatever follows belongs to the stream.
	var line []byte
	one := make([]byte, 1)
	for len(line) < 64 {
		if _, err := io.ReadFull(c, one); err != nil {
			c.Close()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("agent socket handshake: %w", err)
		}
		if one[0] == '\n' {
			break
		}
		line = append(line, one[0])
	}
	if !strings.HasPrefix(string(line), "OK ") {
		c.Close()
		return nil, fmt.Errorf("agent socket refused port %d: %q", port, string(line))
	}
	return c, nil
}

// DialFunc opens a fresh connection to the agent.
type DialFunc func(ctx context.Context) (net.Conn, error)

// Client talks to one VM's agent.
type Client struct {
	dial  DialFunc
	token []byte
}

// New returns a client that authenticates with token.
func New(dial DialFunc, token []byte) *Client { return &Client{dial: dial, token: token} }

// NewHybrid returns a client for a hybrid-vsock socket.
func NewHybrid(socketPath string, token []byte) *Client {
	return New(func(ctx context.Context) (net.Conn, error) {
		return DialHybrid(ctx, socketPath, proto.AgentPort)
	}, token)
}

// session is one authenticated connection with its request sent.
type session struct {
	c     net.Conn
	pc    *proto.Conn
	hello proto.Hello
	stop  func() bool
}

func (s *session) Close() error {
	s.stop()
	return s.c.Close()
}

// open dials, authenticates and sends req; the agent's proof is checked before any
// answer is trusted.
func (cl *Client) open(ctx context.Context, req proto.Request) (*session, error) {
	c, err := cl.dial(ctx)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	s := &session{c: c, pc: proto.NewConn(c), stop: stop}
	fail := func(err error) (*session, error) {
		s.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	if err := s.pc.Expect(proto.THello, &s.hello); err != nil {
		return fail(fmt.Errorf("agent hello: %w", err))
	}
	if s.hello.Proto != proto.Version {
		return fail(fmt.Errorf("agent speaks protocol %d, mvmctl speaks %d: rebuild the image with `mvmctl bootstrap`", s.hello.Proto, proto.Version))
	}
	if err := proto.CheckNonce(s.hello.Nonce); err != nil {
		return fail(err)
	}
	nonce, err := proto.NewNonce()
	if err != nil {
		return fail(err)
	}
	if err := s.pc.WriteJSON(proto.TAuth, proto.Auth{Proto: proto.Version, Nonce: nonce,
		MAC: proto.HostMAC(cl.token, s.hello.Nonce, nonce)}); err != nil {
		return fail(fmt.Errorf("agent auth: %w", err))
	}
	// Pipelined: the request follows the proof without waiting a round trip.
	if err := s.pc.WriteJSON(proto.TRequest, req); err != nil {
		return fail(fmt.Errorf("agent request: %w", err))
	}
	var ok proto.AuthOK
	if err := s.pc.Expect(proto.TAuthOK, &ok); err != nil {
		var re *proto.RemoteError
		if errors.As(err, &re) && re.Code == proto.ErrCodeAuth {
			return fail(fmt.Errorf("%w: the agent rejected this VM's token", proto.ErrAuth))
		}
		return fail(fmt.Errorf("agent auth: %w", err))
	}
	if !proto.VerifyMAC(ok.MAC, proto.AgentMAC(cl.token, s.hello.Nonce, nonce)) {
		return fail(fmt.Errorf("%w: the agent could not prove it holds this VM's token", proto.ErrAuth))
	}
	return s, nil
}

func (cl *Client) simple(ctx context.Context, req proto.Request) (proto.Response, error) {
	s, err := cl.open(ctx, req)
	if err != nil {
		return proto.Response{}, err
	}
	defer s.Close()
	var resp proto.Response
	if err := s.pc.Expect(proto.TResponse, &resp); err != nil {
		if ctx.Err() != nil {
			return resp, ctx.Err()
		}
		return resp, err
	}
	if !resp.OK {
		return resp, fmt.Errorf("agent: %s", resp.Error)
	}
	return resp, nil
}

// Ping checks the agent answers and returns what it says about itself.
func (cl *Client) Ping(ctx context.Context) (proto.AgentInfo, error) {
	resp, err := cl.simple(ctx, proto.Request{Op: proto.OpPing})
	if err != nil {
		return proto.AgentInfo{}, err
	}
	if resp.Info == nil {
		return proto.AgentInfo{}, errors.New("agent: ping answer without info")
	}
	return *resp.Info, nil
}

// SetTime sets the guest clock to t.
func (cl *Client) SetTime(ctx context.Context, t time.Time) error {
	_, err := cl.simple(ctx, proto.Request{Op: proto.OpSetTime, SetTime: &proto.SetTime{UnixNano: t.UnixNano()}})
	return err
}

// Poweroff asks the guest to shut down cleanly.
func (cl *Client) Poweroff(ctx context.Context) error {
	_, err := cl.simple(ctx, proto.Request{Op: proto.OpPoweroff})
	return err
}
