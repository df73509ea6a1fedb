package qemudouble

import (
	"context"
	"fmt"
	"net"

	"github.com/mvm-dev/mvm/internal/agent/hybrid"
	"github.com/mvm-dev/mvm/internal/agent/link"
	"github.com/mvm-dev/mvm/internal/agent/proto"
)

// listenVsock binds the hybrid vsock socket. Like Firecracker it refuses a
// path that exists (bind fails) rather than removing it, and like
// Firecracker it leaves the socket behind when it exits, so a caller that
// forgets to clear it fails here as it would there.
func listenVsock(path string) (net.Listener, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("vsock: bind %s: %w", path, err)
	}
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
	return ln, nil
}

// serveVsock answers hybrid vsock connections until ctx ends: "CONNECT
// <port>\n" to the guest agent's port gets "OK <port>\n" and a stream over
// the agent link; any other port is closed unanswered, as Firecracker does
// when nothing in the guest listens there.
func (m *machine) serveVsock(ctx context.Context, ln net.Listener, agent *link.Keeper) {
	open := func(ctx context.Context, port uint32) (net.Conn, error) {
		if port != proto.AgentPort {
			m.log.Debug("vsock: no listener", "port", port)
			return nil, hybrid.ErrNoListener
		}
		return agent.Open(ctx)
	}
	if err := hybrid.Serve(ctx, ln, open, m.log); err != nil {
		m.log.Error("vsock socket failed", "err", err)
	}
}
