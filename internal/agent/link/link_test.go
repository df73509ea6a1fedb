package link

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestScanForSkipsStaleBytes(t *testing.T) {
	in := "garbage\xff\xffMVMACK1 x\xffMVMSYNC\xffMVMSYNC1 rest"
	br := bufio.NewReader(strings.NewReader(in))
	if err := scanFor(br, syncMarker); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != "rest" {
		t.Fatalf("rest %q", rest)
	}
}

func TestParseAck(t *testing.T) {
	n := strings.Repeat("ab", 16)
	tests := []struct {
		line string
		ok   bool
	}{
		{n + " v1.0", true},
		{n, false},
		{"zz" + n[2:] + " v", false},
		{n[:30] + " v", false},
	}
	for _, tc := range tests {
		if _, _, err := ParseAck(tc.line); (err == nil) != tc.ok {
			t.Errorf("%q: %v", tc.line, err)
		}
	}
}

// TestReconnect: a host goes away mid-session and a new one syncs through the stale
// bytes, as after a supervisor restart or a snapshot restore.
func TestReconnect(t *testing.T) {
	guest, host1 := socketPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sw := &switchable{conn: guest}
	go Serve(ctx, sw, "v-test", nil, func(c net.Conn) {
		io.Copy(c, c) // echo
		c.Close()
	})
	echo := func(s *Session) {
		t.Helper()
		c, err := s.Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("ping"))
		buf := make([]byte, 4)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo: %q %v", buf, err)
		}
		c.Close()
	}
	dctx, dc := context.WithTimeout(ctx, 5*time.Second)
	defer dc()
	s1, err := Dial(dctx, host1, DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	echo(s1)
	// The first host vanishes; a second one arrives after some junk.
	guest2, host2 := socketPair(t)
	sw.swap(guest2)
	host1.Close()
	go host2.Write([]byte("junk-from-nowhere"))
	time.Sleep(50 * time.Millisecond)
	s2, err := Dial(dctx, host2, DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s2.AgentVersion != "v-test" {
		t.Fatalf("version %q", s2.AgentVersion)
	}
	echo(s2)
}

// socketPair is a buffered byte stream like the port's chardev socket (net.Pipe has
// no buffer at all, which no real channel behaves like).
func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "sp")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := conn(fds[0]), conn(fds[1])
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// switchable stands in for a virtio-serial port whose host side changes.
type switchable struct {
	mu   sync.Mutex
	conn net.Conn
}

func (s *switchable) cur() net.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn
}

func (s *switchable) swap(c net.Conn) {
	s.mu.Lock()
	old := s.conn
	s.conn = c
	s.mu.Unlock()
	old.Close()
}

func (s *switchable) Read(p []byte) (int, error) {
	n, err := s.cur().Read(p)
	if err != nil && n == 0 {
		return 0, io.EOF // a port reports EOF while no host is connected
	}
	return n, err
}

func (s *switchable) Write(p []byte) (int, error) { return s.cur().Write(p) }

func FuzzParseSyncAck(f *testing.F) {
	f.Add(strings.Repeat("0f", 16) + " v1")
	f.Add("GO1 " + strings.Repeat("0f", 16))
	f.Add("\xffMVMSYNC1 " + strings.Repeat("0f", 16) + "\n")
	f.Fuzz(func(t *testing.T, line string) {
		_, _ = ParseSync(line)
		_, _, _ = ParseAck(line)
		if kind, nonce, err := ParseHostLine(line); err == nil && (len(nonce) != nonceHex || (kind != syncKind && kind != goKind)) {
			t.Fatalf("accepted %q as %q %q", line, kind, nonce)
		}
		br := bufio.NewReader(strings.NewReader(line))
		_ = scanFor(br, markerPrefix)
		_, _ = readLine(br)
	})
}

func TestParseHostLine(t *testing.T) {
	n := strings.Repeat("ab", 16)
	for _, tc := range []struct {
		line, kind string
	}{
		{"SYNC1 " + n, syncKind},
		{"GO1 " + n, goKind},
		{"ACK1 " + n, ""},
		{"GO1 " + n[:30], ""},
		{"GO1" + n, ""},
		{"READY1 " + n, ""},
	} {
		kind, nonce, err := ParseHostLine(tc.line)
		if kind != tc.kind || (err == nil) != (tc.kind != "") || (err == nil && nonce != n) {
			t.Errorf("%q: %q %q %v", tc.line, kind, nonce, err)
		}
	}
}

// stallingPort delays the guest's next read once, as a busy emulated guest does.
type stallingPort struct {
	net.Conn
	stall atomic.Int64 // nanoseconds
}

func (p *stallingPort) Read(b []byte) (int, error) {
	if d := p.stall.Swap(0); d > 0 {
		time.Sleep(time.Duration(d))
	}
	return p.Conn.Read(b)
}

// TestRelinkSlowGuest: a guest that is slow to read while the host re-links gets
// several syncs; those it reads after its ack must not reach its new session (yamux
// took them for a bad frame and ended it without a word to the host, which then
// thought a dead session alive: every exec, cp and forward hung).
func TestRelinkSlowGuest(t *testing.T) {
	for _, tc := range []struct{ stall, resync time.Duration }{
		{0, 300 * time.Millisecond},
		{650 * time.Millisecond, 300 * time.Millisecond},
		{1500 * time.Millisecond, 300 * time.Millisecond},
		// As after a restore: fast resyncs, and a guest slower than many of them
		// (more syncs than the agent remembers acks for, unless the host stops).
		{1500 * time.Millisecond, 10 * time.Millisecond},
	} {
		stall := tc.stall
		t.Run(fmt.Sprintf("stall %v resync %v", tc.stall, tc.resync), func(t *testing.T) {
			guest, host := socketPair(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			sp := &stallingPort{Conn: guest}
			go Serve(ctx, sp, "v", nil, func(c net.Conn) { io.Copy(c, c); c.Close() })
			dctx, dc := context.WithTimeout(ctx, 10*time.Second)
			defer dc()
			s1, err := Dial(dctx, host, DialOptions{})
			if err != nil {
				t.Fatal(err)
			}
			echo(t, ctx, s1)
			s1.Close() // our side only: the agent's session lives on
			sp.stall.Store(int64(stall))
			s2, err := Dial(dctx, host, DialOptions{Resync: tc.resync}) // as the supervisor re-links
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			echo(t, ctx, s2)
			time.Sleep(100 * time.Millisecond)
			echo(t, ctx, s2)
		})
	}
}

func echo(t *testing.T, ctx context.Context, s *Session) {
	t.Helper()
	c, err := s.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q %v", buf, err)
	}
}

// TestRelinkDeadSessionRefused: a re-link to an agent that completes the exchange but
// then does not speak yamux fails (and can be retried) instead of returning a session
// that looks alive and answers nothing.
func TestRelinkDeadSessionRefused(t *testing.T) {
	guest, host := socketPair(t)
	go func() { // answers the exchange, then swallows everything
		br := bufio.NewReader(guest)
		for {
			if scanFor(br, markerPrefix) != nil {
				return
			}
			line, err := readLine(br)
			if err != nil {
				return
			}
			kind, nonce, err := ParseHostLine(line)
			switch {
			case err != nil:
			case kind == syncKind:
				io.WriteString(guest, ackMarker+nonce+" v\n")
			case kind == goKind:
				io.WriteString(guest, readyMarker+nonce+"\n")
				io.Copy(io.Discard, br)
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if s, err := Dial(ctx, host, DialOptions{Resync: 100 * time.Millisecond}); err == nil {
		s.Close()
		t.Fatal("a session that answers nothing was returned")
	}
}

// TestRelinkLiveAgent: the host drops its session while the agent's is still alive
// (a broken link, a restarted supervisor) and dials again on the same port. The first
// sync lands inside the agent's old session; resyncing gets through.
func TestRelinkLiveAgent(t *testing.T) {
	guest, host := socketPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Serve(ctx, guest, "v", nil, func(c net.Conn) { io.Copy(c, c); c.Close() })
	echo := func(s *Session) {
		t.Helper()
		c, err := s.Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("ping"))
		buf := make([]byte, 4)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo: %q %v", buf, err)
		}
	}
	dctx, dc := context.WithTimeout(ctx, 10*time.Second)
	defer dc()
	s1, err := Dial(dctx, host, DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	echo(s1)
	s1.Close() // only our side: the agent's session lives on
	s2, err := Dial(dctx, host, DialOptions{Resync: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	echo(s2)
	s2.Close()
}
