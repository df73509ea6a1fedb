// Package client is the host side of the agent protocol. It reaches the agent through
// a Unix socket speaking the hybrid-vsock handshake ("CONNECT <port>\n" -> "OK ...\n"),
// which Firecracker provides natively and mvm's supervisor provides for QEMU, so there
// is one code path for every backend.
package client

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/proto"
)

// DialHybrid connects to a hybrid-vsock Unix socket and asks for a guest port.
func DialHybrid(ctx context.Context, socketPath string, port uint32) (conn net.Conn, err error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("connect to agent socket: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if !stop() && err == nil {
			// ctx ended as we finished: the deadline may be poisoned, so fail now.
			c.Close()
			conn, err = nil, ctx.Err()
		}
	}()
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
	bulk  DialFunc // the bulk channel, where the transport has one
	token []byte
	now   func() time.Time
}

// Option configures a Client.
type Option func(*Client)

// WithClock replaces the clock the handshake proves freshness with: the time the
// guest believes it is, where that is known to differ (a restored guest), or in
// tests, to exercise the challenge path.
func WithClock(now func() time.Time) Option { return func(c *Client) { c.now = now } }

// New returns a client that authenticates with token.
func New(dial DialFunc, token []byte, opts ...Option) *Client {
	c := &Client{dial: dial, token: token, now: time.Now}
	for _, o := range opts {
		o(c)
	}
	return c
}

// NewHybrid returns a client for a hybrid-vsock socket.
func NewHybrid(socketPath string, token []byte, opts ...Option) *Client {
	c := New(func(ctx context.Context) (net.Conn, error) {
		return DialHybrid(ctx, socketPath, proto.AgentPort)
	}, token, opts...)
	c.bulk = func(ctx context.Context) (net.Conn, error) { return DialHybrid(ctx, socketPath, proto.BulkPort) }
	return c
}

// session is one authenticated connection with its request sent.
type session struct {
	c    net.Conn
	pc   *proto.Conn
	ok   proto.AuthOK
	stop func() bool
}

func (s *session) Close() error {
	s.stop()
	return s.c.Close()
}

// open dials, authenticates and sends req in one flight (see proto/auth.go); the
// agent's proof is checked before any answer is trusted.
func (cl *Client) open(ctx context.Context, req proto.Request) (*session, error) {
	reqJSON, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	nonce, err := proto.NewNonce()
	if err != nil {
		return nil, err
	}
	c, err := cl.dial(ctx)
	if err != nil {
		return nil, err
	}
	// A deadline first: closing a stream of the agent link (yamux) only half-closes
	// it, and a pending read would wait for the guest, up to yamux's close timeout.
	stop := context.AfterFunc(ctx, func() {
		_ = c.SetDeadline(time.Unix(1, 0))
		c.Close()
	})
	s := &session{c: c, pc: proto.NewConn(c), stop: stop}
	fail := func(err error) (*session, error) {
		s.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	t := cl.now().UnixNano()
	if err := s.pc.WriteJSON(proto.TAuth, proto.Auth{Proto: proto.Version, Nonce: nonce, TimeNs: t,
		MAC: proto.HostMAC(cl.token, nonce, t, nil, reqJSON)}); err != nil {
		return fail(fmt.Errorf("agent auth: %w", err))
	}
	if err := s.pc.WriteControl(proto.TRequest, reqJSON); err != nil {
		return fail(fmt.Errorf("agent request: %w", err))
	}
	f, err := s.pc.Read()
	if err != nil {
		return fail(fmt.Errorf("agent auth: %w", err))
	}
	var challenge []byte
	if f.Type == proto.TChallenge {
		// The agent did not accept our clock (or saw our nonce): answer its challenge.
		var ch proto.Challenge
		if err := proto.Decode(f, proto.TChallenge, &ch); err != nil {
			return fail(err)
		}
		if err := proto.CheckNonce(ch.Nonce); err != nil {
			return fail(err)
		}
		challenge = ch.Nonce
		t = cl.now().UnixNano()
		if err := s.pc.WriteJSON(proto.TAuth, proto.Auth{Proto: proto.Version, Nonce: nonce, TimeNs: t, Challenge: challenge,
			MAC: proto.HostMAC(cl.token, nonce, t, challenge, reqJSON)}); err != nil {
			return fail(fmt.Errorf("agent auth: %w", err))
		}
		if f, err = s.pc.Read(); err != nil {
			return fail(fmt.Errorf("agent auth: %w", err))
		}
	}
	if err := proto.Decode(f, proto.TAuthOK, &s.ok); err != nil {
		var re *proto.RemoteError
		if errors.As(err, &re) && re.Code == proto.ErrCodeAuth {
			return fail(fmt.Errorf("%w: the agent rejected this VM's token", proto.ErrAuth))
		}
		if errors.As(err, &re) && re.Code == proto.ErrCodeProtocol {
			return fail(fmt.Errorf("agent refused the connection: %s (rebuild the image with `mvmctl bootstrap`?)", re.Message))
		}
		return fail(fmt.Errorf("agent auth: %w", err))
	}
	if !proto.VerifyMAC(s.ok.MAC, proto.AgentMAC(cl.token, nonce, challenge)) {
		return fail(fmt.Errorf("%w: the agent could not prove it holds this VM's token", proto.ErrAuth))
	}
	if s.ok.Proto != proto.Version {
		return fail(fmt.Errorf("agent speaks protocol %d, mvmctl speaks %d: rebuild the image with `mvmctl bootstrap`", s.ok.Proto, proto.Version))
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

// Identify gives a guest restored from a snapshot its own identity (see
// proto.Identify). The client authenticates with the token it was made with (the
// snapshot's); afterwards the agent only accepts newToken, which its answer proves
// it holds.
func (cl *Client) Identify(ctx context.Context, now time.Time, entropy, newToken []byte) (map[string]float64, error) {
	resp, err := cl.simple(ctx, proto.Request{Op: proto.OpIdentify, Identify: &proto.Identify{UnixNano: now.UnixNano(), Entropy: entropy}})
	if err != nil {
		return nil, err
	}
	if resp.Identified == nil || !hmac.Equal(resp.Identified.TokenMAC, proto.IdentifiedMAC(newToken, entropy)) {
		return nil, errors.New("the agent did not take the new token from the secrets drive")
	}
	return resp.Identified.StepsMs, nil
}

// Poweroff asks the guest to shut down cleanly.
func (cl *Client) Poweroff(ctx context.Context) error {
	_, err := cl.simple(ctx, proto.Request{Op: proto.OpPoweroff})
	return err
}

// Info returns what the agent reports about the guest (inspect).
func (cl *Client) Info(ctx context.Context) (proto.AgentInfo, error) {
	resp, err := cl.simple(ctx, proto.Request{Op: proto.OpInfo})
	if err != nil {
		return proto.AgentInfo{}, err
	}
	if resp.Info == nil {
		return proto.AgentInfo{}, errors.New("agent: info answer without info")
	}
	return *resp.Info, nil
}

// Connect opens a TCP connection from the guest to host:port (host "" is the guest's
// loopback) and returns it as a stream: the host end of a port forward.
func (cl *Client) Connect(ctx context.Context, host string, port int) (net.Conn, error) {
	s, err := cl.open(ctx, proto.Request{Op: proto.OpConnect, Connect: &proto.Connect{Host: host, Port: port}})
	if err != nil {
		return nil, err
	}
	var resp proto.Response
	if err := s.pc.Expect(proto.TResponse, &resp); err != nil {
		s.Close()
		return nil, cl.ctxErr(ctx, err)
	}
	if !resp.OK {
		s.Close()
		return nil, fmt.Errorf("guest port %d: %s", port, strings.TrimPrefix(resp.Error, "connect: "))
	}
	s.stop() // from here the connection outlives ctx
	return s.pc.Raw(s.c), nil
}
