// Package server is the guest side of the agent protocol: it authenticates each
// connection and serves one request on it.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/proto"
)

// Guest is what the server needs from the machine it runs on. The PID-1 agent
// implements it for real; tests implement it with fakes.
type Guest interface {
	Info() proto.AgentInfo
	SetTime(unixNano int64) error
	Poweroff() // must return at once and power off shortly after, so the answer can leave
}

// Server answers agent connections.
type Server struct {
	Token   []byte
	Version string
	Log     *slog.Logger
	Reaper  *Reaper
	Guest   Guest
	// HandshakeTimeout bounds how long an unauthenticated peer may hold a connection.
	HandshakeTimeout time.Duration
}

// Capabilities this agent offers, reported in Hello.
var capabilities = []string{"exec", "exec.stdin", "exec.timeout", "settime", "poweroff", "info"}

// Serve handles one connection to the end.
func (s *Server) Serve(ctx context.Context, c net.Conn) {
	defer c.Close()
	pc := proto.NewConn(c)
	if err := s.handshake(c, pc); err != nil {
		s.Log.Warn("agent connection refused", "err", err)
		return
	}
	var req proto.Request
	if err := pc.Expect(proto.TRequest, &req); err != nil {
		if !errors.Is(err, io.EOF) {
			s.Log.Warn("agent request", "err", err)
			_ = pc.WriteJSON(proto.TError, proto.Error{Code: proto.ErrCodeProtocol, Message: err.Error()})
		}
		return
	}
	s.dispatch(ctx, pc, &req)
}

func (s *Server) handshake(c net.Conn, pc *proto.Conn) error {
	timeout := s.HandshakeTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	nonce, err := proto.NewNonce()
	if err != nil {
		return err
	}
	if err := pc.WriteJSON(proto.THello, proto.Hello{Proto: proto.Version, AgentVersion: s.Version,
		Capabilities: capabilities, Nonce: nonce}); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	var a proto.Auth
	if err := pc.Expect(proto.TAuth, &a); err != nil {
		return fmt.Errorf("read auth: %w", err)
	}
	if a.Proto != proto.Version {
		_ = pc.WriteJSON(proto.TError, proto.Error{Code: proto.ErrCodeProtocol,
			Message: fmt.Sprintf("protocol version %d not supported (agent speaks %d)", a.Proto, proto.Version)})
		return fmt.Errorf("host protocol %d", a.Proto)
	}
	if err := proto.CheckNonce(a.Nonce); err != nil || len(s.Token) == 0 ||
		!proto.VerifyMAC(a.MAC, proto.HostMAC(s.Token, nonce, a.Nonce)) {
		_ = pc.WriteJSON(proto.TError, proto.Error{Code: proto.ErrCodeAuth, Message: "authentication failed"})
		return proto.ErrAuth
	}
	return pc.WriteJSON(proto.TAuthOK, proto.AuthOK{MAC: proto.AgentMAC(s.Token, nonce, a.Nonce)})
}

func (s *Server) dispatch(ctx context.Context, pc *proto.Conn, req *proto.Request) {
	switch req.Op {
	case proto.OpPing:
		info := s.Guest.Info()
		_ = pc.WriteJSON(proto.TResponse, proto.Response{OK: true, Info: &info})
	case proto.OpInfo:
		info := s.Guest.Info()
		_ = pc.WriteJSON(proto.TResponse, proto.Response{OK: true, Info: &info})
	case proto.OpSetTime:
		if req.SetTime == nil {
			s.badRequest(pc, "settime: missing time")
			return
		}
		if err := s.Guest.SetTime(req.SetTime.UnixNano); err != nil {
			_ = pc.WriteJSON(proto.TResponse, proto.Response{Error: err.Error()})
			return
		}
		_ = pc.WriteJSON(proto.TResponse, proto.Response{OK: true})
	case proto.OpPoweroff:
		s.Log.Info("poweroff requested by host")
		s.Guest.Poweroff() // schedules it, so the answer below still leaves
		_ = pc.WriteJSON(proto.TResponse, proto.Response{OK: true})
	case proto.OpExec:
		if req.Exec == nil {
			s.badRequest(pc, "exec: missing command")
			return
		}
		if err := req.Exec.Validate(); err != nil {
			s.badRequest(pc, err.Error())
			return
		}
		s.exec(ctx, pc, req.Exec)
	default:
		s.badRequest(pc, fmt.Sprintf("unknown operation %q", req.Op))
	}
}

func (s *Server) badRequest(pc *proto.Conn, msg string) {
	_ = pc.WriteJSON(proto.TError, proto.Error{Code: proto.ErrCodeBadReq, Message: msg})
}
