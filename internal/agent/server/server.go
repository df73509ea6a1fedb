// Package server is the guest side of the agent protocol: it authenticates each
// connection and serves one request on it.
package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/proto"
)

// Guest is what the server needs from the machine it runs on. The PID-1 agent
// implements it for real; tests implement it with fakes.
type Guest interface {
	Info() proto.AgentInfo
	SetTime(unixNano int64) error
	// Identify takes on a new identity after a restore (see proto.Identify) and
	// returns the token found on the new secrets drive.
	Identify(req proto.Identify) (token []byte, steps map[string]float64, err error)
	Poweroff() // must return at once and power off shortly after, so the answer can leave
}

// Server answers agent connections.
type Server struct {
	// Token authenticates hosts. After Serve has been called it is read and replaced
	// only under tokenMu (identify swaps it).
	Token   []byte
	tokenMu sync.RWMutex
	Version string
	Log     *slog.Logger
	Reaper  *Reaper
	Guest   Guest
	// HandshakeTimeout bounds how long an unauthenticated peer may hold a connection.
	HandshakeTimeout time.Duration
	// Bulk is the bulk channel's port, if the host gave the guest one.
	Bulk   *os.File
	bulkMu sync.Mutex

	initOnce   sync.Once
	guard      *proto.ReplayGuard
	handshakes chan struct{} // bounds connections that have not authenticated yet
}

// maxHandshakes is how many connections may be authenticating at once; beyond it new
// ones are closed, so unauthenticated peers cannot pile up memory in the guest.
const maxHandshakes = 16

// Capabilities this agent offers, reported in AuthOK.
var capabilities = []string{"exec", "exec.stdin", "exec.timeout", "exec.signal", "exec.tty", "exec.user",
	"connect", "copy", "settime", "poweroff", "info", "identify"}

// Serve handles one connection to the end.
func (s *Server) Serve(ctx context.Context, c net.Conn) {
	defer c.Close()
	s.initOnce.Do(func() {
		s.guard = proto.NewReplayGuard(4096)
		s.handshakes = make(chan struct{}, maxHandshakes)
	})
	select {
	case s.handshakes <- struct{}{}:
	default:
		s.Log.Warn("agent connection refused: too many unauthenticated connections")
		return
	}
	pc := proto.NewConn(c)
	req, err := s.handshake(c, pc)
	<-s.handshakes
	if err != nil {
		if !errors.Is(err, io.EOF) {
			s.Log.Warn("agent connection refused", "err", err)
		}
		return
	}
	s.dispatch(ctx, c, pc, &req)
}

// handshake authenticates the host (see proto/auth.go) and returns its request.
func (s *Server) handshake(c net.Conn, pc *proto.Conn) (proto.Request, error) {
	timeout := s.HandshakeTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	refuse := func(code, msg string, err error) (proto.Request, error) {
		_ = pc.WriteJSON(proto.TError, proto.Error{Code: code, Message: msg})
		return proto.Request{}, err
	}
	var a proto.Auth
	af, err := pc.ReadLimit(proto.MaxAuthPayload)
	if err == nil {
		err = proto.Decode(af, proto.TAuth, &a)
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			return proto.Request{}, err
		}
		return refuse(proto.ErrCodeProtocol, "expected auth", fmt.Errorf("read auth: %w", err))
	}
	if a.Proto != proto.Version {
		return refuse(proto.ErrCodeProtocol, fmt.Sprintf("protocol version %d not supported (agent speaks %d)", a.Proto, proto.Version),
			fmt.Errorf("host protocol %d", a.Proto))
	}
	rf, err := pc.ReadLimit(proto.MaxControlPayload)
	if err != nil {
		return proto.Request{}, fmt.Errorf("read request: %w", err)
	}
	if rf.Type != proto.TRequest {
		return refuse(proto.ErrCodeProtocol, "expected a request after auth", fmt.Errorf("got %s after auth", rf.Type))
	}
	token := s.token()
	if proto.CheckNonce(a.Nonce) != nil || len(token) == 0 ||
		!proto.VerifyMAC(a.MAC, proto.HostMAC(token, a.Nonce, a.TimeNs, nil, rf.Payload)) {
		return refuse(proto.ErrCodeAuth, "authentication failed", proto.ErrAuth)
	}
	var challenge []byte
	if !s.guard.Fresh(a.Nonce, a.TimeNs, time.Now()) {
		if challenge, err = proto.NewNonce(); err != nil {
			return proto.Request{}, err
		}
		if err := pc.WriteJSON(proto.TChallenge, proto.Challenge{Nonce: challenge, TimeNs: time.Now().UnixNano()}); err != nil {
			return proto.Request{}, err
		}
		var a2 proto.Auth
		af, err := pc.ReadLimit(proto.MaxAuthPayload)
		if err == nil {
			err = proto.Decode(af, proto.TAuth, &a2)
		}
		if err != nil {
			return proto.Request{}, fmt.Errorf("read challenge answer: %w", err)
		}
		if !bytes.Equal(a2.Challenge, challenge) || !bytes.Equal(a2.Nonce, a.Nonce) ||
			!proto.VerifyMAC(a2.MAC, proto.HostMAC(token, a.Nonce, a2.TimeNs, challenge, rf.Payload)) {
			return refuse(proto.ErrCodeAuth, "authentication failed", proto.ErrAuth)
		}
	}
	if err := pc.WriteJSON(proto.TAuthOK, proto.AuthOK{Proto: proto.Version, AgentVersion: s.Version,
		Capabilities: capabilities, MAC: proto.AgentMAC(token, a.Nonce, challenge)}); err != nil {
		return proto.Request{}, err
	}
	var req proto.Request
	if err := proto.Decode(rf, proto.TRequest, &req); err != nil {
		return refuse(proto.ErrCodeBadReq, err.Error(), err)
	}
	return req, nil
}

func (s *Server) dispatch(ctx context.Context, c net.Conn, pc *proto.Conn, req *proto.Request) {
	switch req.Op {
	case proto.OpPing:
		info := s.Guest.Info()
		_ = pc.WriteJSON(proto.TResponse, proto.Response{OK: true, Info: &info})
	case proto.OpInfo:
		info := s.Guest.Info()
		details(&info)
		info.Capabilities = capabilities
		_ = pc.WriteJSON(proto.TResponse, proto.Response{OK: true, Info: &info})
	case proto.OpCopyOut, proto.OpCopyIn:
		if req.Copy == nil || req.Copy.Validate(req.Op) != nil {
			s.badRequest(pc, "copy: missing or bad path")
			return
		}
		if req.Op == proto.OpCopyOut {
			s.copyOut(ctx, pc, req.Copy)
		} else {
			s.copyIn(ctx, pc, req.Copy)
		}
		// A copy's buffers are garbage now; hand the memory back so a large copy
		// leaves the guest's memory as it found it.
		debug.FreeOSMemory()
	case proto.OpConnect:
		if req.Connect == nil || req.Connect.Validate() != nil {
			s.badRequest(pc, "connect: missing or bad port")
			return
		}
		s.connect(ctx, c, pc, req.Connect)
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
	case proto.OpIdentify:
		if req.Identify == nil || req.Identify.Validate() != nil {
			s.badRequest(pc, "identify: missing time or entropy")
			return
		}
		tok, steps, err := s.Guest.Identify(*req.Identify)
		if err != nil {
			_ = pc.WriteJSON(proto.TResponse, proto.Response{Error: err.Error()})
			return
		}
		s.tokenMu.Lock()
		s.Token = tok
		s.tokenMu.Unlock()
		_ = pc.WriteJSON(proto.TResponse, proto.Response{OK: true, Identified: &proto.Identified{
			StepsMs: steps, TokenMAC: proto.IdentifiedMAC(tok, req.Identify.Entropy)}})
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

func (s *Server) token() []byte {
	s.tokenMu.RLock()
	defer s.tokenMu.RUnlock()
	return s.Token
}

func (s *Server) badRequest(pc *proto.Conn, msg string) {
	_ = pc.WriteJSON(proto.TError, proto.Error{Code: proto.ErrCodeBadReq, Message: msg})
}
