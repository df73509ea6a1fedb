package server

import (
	"context"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/proto"
)

// connect dials a TCP port in the guest and splices it with the stream: the host end
// of a port forward.
func (s *Server) connect(ctx context.Context, c net.Conn, pc *proto.Conn, req *proto.Connect) {
	host := req.Host
	if host == "" {
		host = "127.0.0.1"
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	tcp, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(req.Port)))
	if err != nil {
		_ = pc.WriteJSON(proto.TResponse, proto.Response{Error: "connect: " + err.Error()})
		return
	}
	defer tcp.Close()
	if err := pc.WriteJSON(proto.TResponse, proto.Response{OK: true}); err != nil {
		return
	}
	splice(pc.Raw(c), tcp)
}

type closeWriter interface{ CloseWrite() error }

// splice copies both ways until both directions are done, passing half-closes on
// (an HTTP client that shuts down its write side still gets its answer).
func splice(a, b net.Conn) {
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		buf := pumpBuffers.Get().(*[]byte)
		defer pumpBuffers.Put(buf)
		if _, err := io.CopyBuffer(dst, src, *buf); err != nil {
			a.Close()
			b.Close()
			return
		}
		if cw, ok := dst.(closeWriter); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	wg.Add(2)
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
}
