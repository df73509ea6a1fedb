package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/client"
	"github.com/mvm-dev/mvm/internal/agent/hybrid"
	"github.com/mvm-dev/mvm/internal/agent/link"
	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/agent/server"
)

type fakeGuest struct {
	poweroffs atomic.Int32
	lastTime  atomic.Int64
}

func (g *fakeGuest) Info() proto.AgentInfo {
	return proto.AgentInfo{AgentVersion: "test", Hostname: "h"}
}
func (g *fakeGuest) SetTime(ns int64) error { g.lastTime.Store(ns); return nil }
func (g *fakeGuest) Poweroff()              { g.poweroffs.Add(1) }
func (g *fakeGuest) Identify(req proto.Identify) ([]byte, map[string]float64, error) {
	g.lastTime.Store(req.UnixNano)
	return []byte("restored-token-0123456789"), map[string]float64{"clock": 0.1}, nil
}

// stack runs the real guest server behind the real link, the hybrid socket on the
// host, and returns the socket path: the same path every mvmctl command takes.
func stack(t *testing.T, token []byte) (string, *fakeGuest) {
	sock, g, _ := stackWithBulk(t, token)
	return sock, g
}

func stackWithBulk(t *testing.T, token []byte) (string, *fakeGuest, *hybrid.Exclusive) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	guestEnd := os.NewFile(uintptr(fds[0]), "guest")
	hostFile := os.NewFile(uintptr(fds[1]), "host")
	hostEnd, err := net.FileConn(hostFile)
	hostFile.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { guestEnd.Close(); hostEnd.Close() })
	g := &fakeGuest{}
	log := slog.New(slog.DiscardHandler)
	srv := &server.Server{Token: []byte("guest-token-0123456789"), Version: "test", Log: log,
		Reaper: server.NewReaper(ctx), Guest: g}
	// The bulk channel, as the supervisor offers it: a second stream, one holder at a time.
	bfds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Pollable, as the guest opens its port: deadlines must be able to end a transfer.
	if err := syscall.SetNonblock(bfds[0], true); err != nil {
		t.Fatal(err)
	}
	srv.Bulk = os.NewFile(uintptr(bfds[0]), "bulk-guest")
	bulkHostFile := os.NewFile(uintptr(bfds[1]), "bulk-host")
	bulkHost, err := net.FileConn(bulkHostFile)
	bulkHostFile.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Bulk.Close(); bulkHost.Close() })
	bulk := hybrid.NewExclusive(bulkHost)
	go link.Serve(ctx, guestEnd, "test", log, func(c net.Conn) { srv.Serve(ctx, c) })

	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	defer dcancel()
	sess, err := link.Dial(dctx, hostEnd, link.DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sess.AgentVersion != "test" {
		t.Fatalf("agent version %q", sess.AgentVersion)
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go hybrid.Serve(ctx, l, func(ctx context.Context, port uint32) (net.Conn, error) {
		switch port {
		case proto.AgentPort:
			return sess.Open(ctx)
		case proto.BulkPort:
			return bulk.Attach()
		}
		return nil, hybrid.ErrNoListener
	}, log)
	return sock, g, bulk
}

var goodToken = []byte("guest-token-0123456789")

// After identify the agent accepts only the new VM's token: a clone answers nobody
// holding the snapshot's.
func TestIdentifySwapsToken(t *testing.T) {
	sock, g := stack(t, goodToken)
	ctx := context.Background()
	old := client.NewHybrid(sock, goodToken)
	newToken := []byte("restored-token-0123456789")
	if _, err := old.Identify(ctx, time.Now(), make([]byte, 8), newToken); err == nil {
		t.Error("identify with too little entropy accepted")
	}
	now := time.Now()
	steps, err := old.Identify(ctx, now, bytes.Repeat([]byte{7}, 64), newToken)
	if err != nil || steps["clock"] != 0.1 || g.lastTime.Load() != now.UnixNano() {
		t.Fatalf("identify: %v %v", steps, err)
	}
	if _, err := old.Ping(ctx); err == nil {
		t.Error("the snapshot's token still works after identify")
	}
	if _, err := client.NewHybrid(sock, newToken).Ping(ctx); err != nil {
		t.Errorf("the new token does not work: %v", err)
	}
	// The answer must prove the agent holds the token the host gave the clone.
	sock2, _ := stack(t, goodToken)
	if _, err := client.NewHybrid(sock2, goodToken).Identify(ctx, now, bytes.Repeat([]byte{7}, 64), []byte("another-token-0123456789")); err == nil {
		t.Error("identify accepted an answer proving another token")
	}
}

func TestPingAndSetTime(t *testing.T) {
	sock, g := stack(t, goodToken)
	cl := client.NewHybrid(sock, goodToken)
	ctx := context.Background()
	info, err := cl.Ping(ctx)
	if err != nil || info.AgentVersion != "test" {
		t.Fatalf("ping: %v %+v", err, info)
	}
	now := time.Now()
	if err := cl.SetTime(ctx, now); err != nil {
		t.Fatal(err)
	}
	if g.lastTime.Load() != now.UnixNano() {
		t.Fatalf("settime delivered %d, want %d", g.lastTime.Load(), now.UnixNano())
	}
	if err := cl.Poweroff(ctx); err != nil || g.poweroffs.Load() != 1 {
		t.Fatalf("poweroff: %v %d", err, g.poweroffs.Load())
	}
}

func TestWrongTokenRefused(t *testing.T) {
	sock, _ := stack(t, goodToken)
	for _, tok := range [][]byte{[]byte("wrong-token-0123456789"), nil} {
		_, err := client.NewHybrid(sock, tok).Ping(context.Background())
		if !errors.Is(err, proto.ErrAuth) {
			t.Fatalf("token %q: want auth error, got %v", tok, err)
		}
	}
	// A raw peer that skips the handshake gets nothing but an error frame.
	c, err := client.DialHybrid(context.Background(), sock, proto.AgentPort)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pc := proto.NewConn(c)
	if err := pc.WriteJSON(proto.TRequest, proto.Request{Op: proto.OpPoweroff}); err != nil {
		t.Fatal(err)
	}
	if f, err := pc.Read(); err == nil && f.Type != proto.TError {
		t.Fatalf("unauthenticated request answered with %s", f.Type)
	}
}

// TestClockSkewUsesChallenge: a host whose clock disagrees with the guest's is still
// admitted, through the challenge round trip.
func TestClockSkewUsesChallenge(t *testing.T) {
	sock, _ := stack(t, goodToken)
	for _, skew := range []time.Duration{-time.Hour, time.Hour, 0} {
		cl := client.NewHybrid(sock, goodToken, client.WithClock(func() time.Time { return time.Now().Add(skew) }))
		if _, err := cl.Ping(context.Background()); err != nil {
			t.Fatalf("skew %v: %v", skew, err)
		}
	}
}

// TestReplayedOpeningRefused: an attacker who recorded a host's opening flight (auth
// and request) and plays it again gets a challenge it cannot answer.
func TestReplayedOpeningRefused(t *testing.T) {
	sock, g := stack(t, goodToken)
	var recorded []byte
	rec := client.New(func(ctx context.Context) (net.Conn, error) {
		c, err := client.DialHybrid(ctx, sock, proto.AgentPort)
		return &recordingConn{Conn: c, buf: &recorded}, err
	}, goodToken)
	if err := rec.Poweroff(context.Background()); err != nil {
		t.Fatal(err)
	}
	c, err := client.DialHybrid(context.Background(), sock, proto.AgentPort)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(recorded); err != nil {
		t.Fatal(err)
	}
	pc := proto.NewConn(c)
	f, err := pc.Read()
	if err != nil || f.Type != proto.TChallenge {
		t.Fatalf("replay answered with %v %v, want a challenge", f.Type, err)
	}
	c.(interface{ CloseWrite() error }).CloseWrite() // the attacker has no answer
	io.Copy(io.Discard, c)
	if g.poweroffs.Load() != 1 {
		t.Fatalf("replayed poweroff executed: %d", g.poweroffs.Load())
	}
}

type recordingConn struct {
	net.Conn
	buf *[]byte
}

func (r *recordingConn) Write(p []byte) (int, error) {
	*r.buf = append(*r.buf, p...)
	return r.Conn.Write(p)
}

func TestExec(t *testing.T) {
	sock, _ := stack(t, goodToken)
	cl := client.NewHybrid(sock, goodToken)
	tests := []struct {
		name       string
		argv       []string
		env        []string
		cwd        string
		stdin      string
		timeout    time.Duration
		wantOut    string
		wantErr    string
		wantCode   int
		wantStart  int // StartError code
		wantTimeou bool
	}{
		{name: "stdout", argv: []string{"echo", "hello"}, wantOut: "hello\n"},
		{name: "stderr and code", argv: []string{"sh", "-c", "echo oops >&2; exit 3"}, wantErr: "oops\n", wantCode: 3},
		{name: "env and cwd", argv: []string{"sh", "-c", "echo $FOO; pwd"}, env: []string{"FOO=bar"}, cwd: "/tmp", wantOut: "bar\n/tmp\n"},
		{name: "stdin", argv: []string{"cat"}, stdin: "from host\n", wantOut: "from host\n"},
		{name: "not found", argv: []string{"no-such-command-xyz"}, wantStart: 127},
		{name: "not executable", argv: []string{"/etc/hostname"}, wantStart: 126},
		{name: "bad cwd", argv: []string{"true"}, cwd: "/no/such/dir", wantStart: 126},
		{name: "signal", argv: []string{"sh", "-c", "kill -TERM $$"}, wantCode: 128 + 15},
		{name: "timeout", argv: []string{"sleep", "30"}, timeout: 300 * time.Millisecond, wantCode: 137, wantTimeou: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			o := client.ExecOptions{Argv: tc.argv, Env: tc.env, Cwd: tc.cwd, Timeout: tc.timeout, Stdout: &out, Stderr: &errb}
			if tc.stdin != "" {
				o.Stdin = strings.NewReader(tc.stdin)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			ex, err := cl.Exec(ctx, o)
			if tc.wantStart != 0 {
				var se *client.StartError
				if !errors.As(err, &se) || se.Code != tc.wantStart {
					t.Fatalf("want start error %d, got %v", tc.wantStart, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ex.Code != tc.wantCode || ex.TimedOut != tc.wantTimeou {
				t.Fatalf("exit %+v, want code %d timedout %v", ex, tc.wantCode, tc.wantTimeou)
			}
			if out.String() != tc.wantOut || errb.String() != tc.wantErr {
				t.Fatalf("stdout %q stderr %q", out.String(), errb.String())
			}
		})
	}
}

func TestExecConcurrentAndLarge(t *testing.T) {
	sock, _ := stack(t, goodToken)
	cl := client.NewHybrid(sock, goodToken)
	const n = 10
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			var out countWriter
			// 8 MiB through one stream, ten at once over one link.
			ex, err := cl.Exec(context.Background(), client.ExecOptions{
				Argv: []string{"head", "-c", "8388608", "/dev/zero"}, Stdout: &out})
			if err == nil && (ex.Code != 0 || out.n != 8<<20) {
				err = errors.New("short output")
			}
			errs <- err
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

type countWriter struct{ n int }

func (w *countWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

func TestExecTTYAndResize(t *testing.T) {
	if _, err := os.Stat("/dev/ptmx"); err != nil {
		t.Skip("no /dev/ptmx on this host")
	}
	sock, _ := stack(t, goodToken)
	cl := client.NewHybrid(sock, goodToken)
	var out bytes.Buffer
	resize := make(chan proto.Resize, 1)
	stdinR, stdinW := io.Pipe()
	go func() {
		// Ask for the size, resize, ask again, then quit: every step goes through the terminal.
		io.WriteString(stdinW, "stty size; test -t 0 && echo is-a-tty\n")
		time.Sleep(300 * time.Millisecond)
		resize <- proto.Resize{Rows: 50, Cols: 132}
		time.Sleep(300 * time.Millisecond)
		io.WriteString(stdinW, "stty size; exit 5\n")
	}()
	ex, err := cl.Exec(context.Background(), client.ExecOptions{Argv: []string{"sh"}, TTY: true, Rows: 24, Cols: 80,
		Stdin: stdinR, Stdout: &out, Resize: resize})
	if err != nil {
		t.Fatal(err)
	}
	got := out.String()
	if ex.Code != 5 || !strings.Contains(got, "24 80") || !strings.Contains(got, "is-a-tty") || !strings.Contains(got, "50 132") {
		t.Fatalf("exit %d, output %q", ex.Code, got)
	}
}

func TestExecSignalForwarded(t *testing.T) {
	sock, _ := stack(t, goodToken)
	cl := client.NewHybrid(sock, goodToken)
	sigs := make(chan int, 1)
	go func() { time.Sleep(300 * time.Millisecond); sigs <- 15 }()
	ex, err := cl.Exec(context.Background(), client.ExecOptions{Argv: []string{"sleep", "20"}, Signals: sigs})
	if err != nil || ex.Code != 128+15 {
		t.Fatalf("%+v %v", ex, err)
	}
}

func TestExecAsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to change user")
	}
	sock, _ := stack(t, goodToken)
	cl := client.NewHybrid(sock, goodToken)
	var out bytes.Buffer
	ex, err := cl.Exec(context.Background(), client.ExecOptions{Argv: []string{"sh", "-c", "id -u; echo $HOME"}, User: "nobody", Stdout: &out})
	if err != nil || ex.Code != 0 || !strings.HasPrefix(out.String(), "65534\n") {
		t.Fatalf("%+v %v %q", ex, err, out.String())
	}
	if _, err := cl.Exec(context.Background(), client.ExecOptions{Argv: []string{"true"}, User: "no-such-user-x"}); err == nil {
		t.Fatal("unknown user accepted")
	}
}

func TestConnectForwards(t *testing.T) {
	sock, _ := stack(t, goodToken)
	cl := client.NewHybrid(sock, goodToken)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				b, _ := io.ReadAll(c) // until the client half-closes
				c.Write(append([]byte("echo:"), b...))
				c.Close()
			}()
		}
	}()
	port := l.Addr().(*net.TCPAddr).Port
	t.Run("closed port", func(t *testing.T) {
		if _, err := cl.Connect(context.Background(), "", 1); err == nil || !strings.Contains(err.Error(), "guest port 1") {
			t.Fatalf("closed port: %v", err)
		}
	})
	for i := 0; i < 5; i++ { // several at once
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			c, err := cl.Connect(context.Background(), "", port)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte("hello"))
			c.(interface{ CloseWrite() error }).CloseWrite()
			b, err := io.ReadAll(c)
			if err != nil || string(b) != "echo:hello" {
				t.Fatalf("%q %v", b, err)
			}
		})
	}
}

func TestInfo(t *testing.T) {
	sock, _ := stack(t, goodToken)
	info, err := client.NewHybrid(sock, goodToken).Info(context.Background())
	if err != nil || len(info.Mounts) == 0 || info.MemTotalKiB == 0 || len(info.Load) != 3 || info.Processes == 0 {
		t.Fatalf("%+v %v", info, err)
	}
}

// TestHostGoneKillsCommand: when mvmctl disappears mid-exec (killed, terminal gone),
// the guest command is hung up and, if it ignores that, killed.
func TestHostGoneKillsCommand(t *testing.T) {
	sock, _ := stack(t, goodToken)
	cl := client.NewHybrid(sock, goodToken)
	pidFile := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := cl.Exec(ctx, client.ExecOptions{Argv: []string{"sh", "-c", "trap '' HUP; echo $$ > " + pidFile + "; exec sleep 30"}})
	if err == nil {
		t.Fatal("exec outlived its context")
	}
	raw, _ := os.ReadFile(pidFile)
	var pid int
	fmt.Sscan(string(raw), &pid)
	if pid == 0 {
		t.Fatal("no pid")
	}
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("command %d still runs after its host went away", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestUnauthenticatedLimits: before authenticating, a peer can make the agent neither
// read a large frame nor hold many connections open.
func TestUnauthenticatedLimits(t *testing.T) {
	sock, _ := stack(t, goodToken)
	c, err := client.DialHybrid(context.Background(), sock, proto.AgentPort)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A header announcing a 1 MiB data frame, as the very first thing.
	c.Write([]byte{0, 0x10, 0, 0, byte(proto.TStdin)})
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := proto.NewConn(c).Read()
	if err == nil && f.Type != proto.TError {
		t.Fatalf("got %s", f.Type)
	}
	// More idle connections than the agent admits: the extra ones are closed at once.
	var conns []net.Conn
	for i := 0; i < 40; i++ {
		c, err := client.DialHybrid(context.Background(), sock, proto.AgentPort)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	closed := 0
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); errors.Is(err, io.EOF) {
			closed++
		}
		c.Close()
	}
	if closed == 0 {
		t.Fatal("no connection was refused beyond the handshake limit")
	}
	// And a well-behaved client still gets in afterwards.
	time.Sleep(100 * time.Millisecond)
	if _, err := client.NewHybrid(sock, goodToken).Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestCopyRoundTrip copies a tree into the "guest" and back out through the agent and
// compares: contents, modes, symlinks.
func TestCopyRoundTrip(t *testing.T) {
	sock, _ := stack(t, goodToken)
	cl := client.NewHybrid(sock, goodToken)
	ctx := context.Background()
	src := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(src, "sub"), 0o750)
	os.WriteFile(filepath.Join(src, "a.txt"), []byte("alpha"), 0o640)
	big := make([]byte, 3<<20+17)
	for i := range big {
		big[i] = byte(i * 31)
	}
	os.WriteFile(filepath.Join(src, "sub", "big.bin"), big, 0o600)
	os.Symlink("../a.txt", filepath.Join(src, "sub", "link"))
	guest := t.TempDir()
	res, err := cl.CopyIn(ctx, src, guest)
	if err != nil || res.Entries != 5 {
		t.Fatalf("copy in: %+v %v", res, err)
	}
	back := t.TempDir()
	if _, err := cl.CopyOut(ctx, filepath.Join(guest, "tree"), back); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(back, "tree", "sub", "big.bin"))
	if !bytes.Equal(got, big) {
		t.Fatal("big file differs after the round trip")
	}
	if l, _ := os.Readlink(filepath.Join(back, "tree", "sub", "link")); l != "../a.txt" {
		t.Fatalf("link %q", l)
	}
	if st, _ := os.Stat(filepath.Join(back, "tree", "a.txt")); st.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v", st.Mode())
	}
	// Errors name the problem.
	if _, err := cl.CopyOut(ctx, "/no/such/path", back); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing source: %v", err)
	}
	if _, err := cl.CopyIn(ctx, filepath.Join(src, "a.txt"), "/no/such/dir/x"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing parent: %v", err)
	}
}

// TestCopyOutBulkAndFallback: a copy out uses the bulk channel; a second one while it
// is held falls back to frames; both deliver the same bytes.
func TestCopyOutBulkAndFallback(t *testing.T) {
	sock, _, bulk := stackWithBulk(t, goodToken)
	cl := client.NewHybrid(sock, goodToken)
	src := filepath.Join(t.TempDir(), "f")
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	os.WriteFile(src, data, 0o644)
	// Hold the bulk channel, with stale junk in it as an abandoned transfer leaves.
	hold, err := client.DialHybrid(context.Background(), sock, proto.BulkPort)
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if _, err := cl.CopyOut(context.Background(), src, filepath.Join(dst, "framed")); err != nil {
		t.Fatal(err)
	}
	if bulk.Forwarded() != 0 {
		t.Fatal("the held channel was used")
	}
	hold.Close()
	time.Sleep(50 * time.Millisecond)
	if _, err := cl.CopyOut(context.Background(), src, filepath.Join(dst, "bulk")); err != nil {
		t.Fatal(err)
	}
	if bulk.Forwarded() < int64(len(data)) {
		t.Fatalf("bulk channel carried %d bytes, want the file", bulk.Forwarded())
	}
	for _, n := range []string{"framed", "bulk"} {
		if got, _ := os.ReadFile(filepath.Join(dst, n)); !bytes.Equal(got, data) {
			t.Fatalf("%s copy differs", n)
		}
	}
}
