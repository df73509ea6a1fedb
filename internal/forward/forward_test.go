package forward

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/vm"
)

func TestListenInUseIsClear(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.Addr().(*net.TCPAddr).Port
	free, _ := net.Listen("tcp", "127.0.0.1:0")
	freePort := free.Addr().(*net.TCPAddr).Port
	free.Close()
	specs := []vm.PortSpec{{HostIP: "127.0.0.1", HostPort: freePort, GuestPort: 80, Proto: "tcp"},
		{HostIP: "127.0.0.1", HostPort: port, GuestPort: 81, Proto: "tcp"}}
	_, err = Listen(specs)
	if err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("got %v", err)
	}
	// The first port was released again: nothing is left bound after a failure.
	l, err := net.Listen("tcp", specs[0].HostAddr())
	if err != nil {
		t.Fatalf("port bound before the failure is still held: %v", err)
	}
	l.Close()
}

func TestServeForwards(t *testing.T) {
	ls, err := Listen([]vm.PortSpec{{HostIP: "127.0.0.1", HostPort: freePort(t), GuestPort: 80, Proto: "tcp"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	dial := func(ctx context.Context, port int) (net.Conn, error) {
		a, b := unixPair(t)
		go func() { // the "guest service": upper-cases what it gets
			buf, _ := io.ReadAll(b)
			b.Write([]byte(strings.ToUpper(string(buf)) + "@" + string(rune('0'+port/10))))
			b.Close()
		}()
		return a, nil
	}
	done := make(chan struct{})
	go func() { Serve(ctx, ls, dial, slog.New(slog.DiscardHandler)); close(done) }()
	c, err := net.Dial("tcp", ls[0].Spec.HostAddr())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hi"))
	c.(*net.TCPConn).CloseWrite()
	got, _ := io.ReadAll(c)
	if string(got) != "HI@8" {
		t.Fatalf("got %q", got)
	}
	cancel()
	<-done
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// unixPair is a connected pair that supports half-close, like an agent stream.
func unixPair(t *testing.T) (net.Conn, net.Conn) {
	l, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch := make(chan net.Conn, 1)
	go func() { c, _ := l.Accept(); ch <- c }()
	a, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return a, <-ch
}

// TestServeStopsWithOpenConnection: cancelling Serve (Ctrl-C on mvmctl forward) ends it
// even while a client holds a connection open, and that connection is closed.
func TestServeStopsWithOpenConnection(t *testing.T) {
	ls, err := Listen([]vm.PortSpec{{HostIP: "127.0.0.1", HostPort: freePort(t), GuestPort: 80, Proto: "tcp"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dialed := make(chan struct{})
	dial := func(ctx context.Context, port int) (net.Conn, error) {
		a, b := unixPair(t)
		go io.Copy(io.Discard, b) // a guest service that never answers
		close(dialed)
		return a, nil
	}
	done := make(chan struct{})
	go func() { Serve(ctx, ls, dial, slog.New(slog.DiscardHandler)); close(done) }()
	c, err := net.Dial("tcp", ls[0].Addr().String()) // an idle keep-alive connection
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-dialed
	cancel()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("Serve still runs 3 s after cancel, with one connection open")
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the open connection was not closed: %v", err)
	}
}

// flakyListener fails its first Accept as a process out of descriptors does.
type flakyListener struct {
	net.Listener
	failed bool
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if !l.failed {
		l.failed = true
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestServeSurvivesAcceptErrors: an accept that fails for a while (EMFILE) does not
// leave the port bound and unserved.
func TestServeSurvivesAcceptErrors(t *testing.T) {
	ls, err := Listen([]vm.PortSpec{{HostIP: "127.0.0.1", HostPort: freePort(t), GuestPort: 80, Proto: "tcp"}})
	if err != nil {
		t.Fatal(err)
	}
	ls[0].Listener = &flakyListener{Listener: ls[0].Listener}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dial := func(ctx context.Context, port int) (net.Conn, error) {
		a, b := unixPair(t)
		go func() { b.Write([]byte("hello")); b.Close() }()
		return a, nil
	}
	done := make(chan struct{})
	go func() { Serve(ctx, ls, dial, slog.New(slog.DiscardHandler)); close(done) }()
	c, err := net.Dial("tcp", ls[0].Spec.HostAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if got, err := io.ReadAll(c); string(got) != "hello" {
		t.Fatalf("after a failed accept: %q %v", got, err)
	}
	cancel()
	<-done
}
