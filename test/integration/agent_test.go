package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/client"
	"github.com/mvm-dev/mvm/internal/agent/proto"
)

// agentClient talks to a VM's agent directly (the library mvmctl uses), for tests
// that need timing or a terminal.
func (e *env) agentClient(name string, opts ...client.Option) *client.Client {
	e.t.Helper()
	v := e.vm(name)
	dir := filepath.Join(e.root, "vms", v.ID)
	tok, err := os.ReadFile(filepath.Join(dir, "token"))
	if err != nil {
		e.t.Fatal(err)
	}
	return client.NewHybrid(filepath.Join(dir, "agent.sock"), tok, opts...)
}

// timedWriter records when each write arrived.
type timedWriter struct {
	mu    sync.Mutex
	start time.Time
	at    []time.Duration
	buf   bytes.Buffer
}

func (w *timedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.at = append(w.at, time.Since(w.start))
	return w.buf.Write(p)
}

func TestAgentExec(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.must("up", "-d", "--name", "a", "--network", "none", "--memory", "768M")
	cl := e.agentClient("a")
	ctx := context.Background()

	t.Run("output streams as produced", func(t *testing.T) {
		w := &timedWriter{start: time.Now()}
		ex, err := cl.Exec(ctx, client.ExecOptions{Argv: []string{"sh", "-c", "for i in 1 2 3; do echo $i; sleep 1; done"}, Stdout: w})
		total := time.Since(w.start)
		if err != nil || ex.Code != 0 || w.buf.String() != "1\n2\n3\n" {
			t.Fatalf("%+v %v %q", ex, err, w.buf.String())
		}
		if len(w.at) < 3 || total-w.at[0] < 1500*time.Millisecond {
			t.Fatalf("first line at %v of %v: output was not streamed", w.at, total)
		}
	})

	t.Run("64 MiB of stdin through mvmctl", func(t *testing.T) {
		data := make([]byte, 64<<20)
		rand.Read(data)
		sum := sha256.Sum256(data)
		r := e.runWith(data, nil, "exec", "-i", "a", "--", "sha256sum")
		if r.code != 0 || !strings.HasPrefix(r.stdout, hex.EncodeToString(sum[:])) {
			t.Fatalf("exit %d, %q, want %x: %s", r.code, r.stdout, sum, r.stderr)
		}
	})

	t.Run("100 MiB of output without the agent holding it", func(t *testing.T) {
		rss := func() int {
			out := e.mustExec("a", "sh", "-c", "grep VmRSS /proc/1/status | tr -s ' ' | cut -d' ' -f2")
			var kb int
			fmt.Sscan(out, &kb)
			return kb
		}
		before := rss()
		var n countingWriter
		ex, err := cl.Exec(ctx, client.ExecOptions{Argv: []string{"dd", "if=/dev/zero", "bs=1M", "count=100"}, Stdout: &n})
		if err != nil || ex.Code != 0 || n != 100<<20 {
			t.Fatalf("%+v %v %d bytes", ex, err, n)
		}
		after := rss()
		t.Logf("agent RSS %d KiB before, %d KiB after 100 MiB of output", before, after)
		if after-before > 32<<10 {
			t.Errorf("agent RSS grew by %d KiB streaming 100 MiB: output is being held", after-before)
		}
	})

	t.Run("terminal, resize and Ctrl-C", func(t *testing.T) {
		in, inW := io.Pipe()
		resize := make(chan proto.Resize, 1)
		var out syncBuffer
		done := make(chan struct{})
		var ex proto.Exit
		var err error
		go func() {
			ex, err = cl.Exec(ctx, client.ExecOptions{Argv: []string{"sh"}, TTY: true, Rows: 24, Cols: 80, Stdin: in, Stdout: &out, Resize: resize})
			close(done)
		}()
		step := func(input, want string) {
			t.Helper()
			io.WriteString(inW, input)
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(out.String(), want) {
				if time.Now().After(deadline) {
					t.Fatalf("no %q after %q; terminal shows %q", want, input, out.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		step("stty size\n", "24 80")
		resize <- proto.Resize{Rows: 40, Cols: 100}
		time.Sleep(200 * time.Millisecond)
		step("stty size\n", "40 100")
		step("sleep 30\n", "sleep 30")
		// Only once sleep runs is the terminal back in cooked mode, where Ctrl-C is
		// echoed and signals; before that, the shell's line editor would take it.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			ex, err := cl.Exec(ctx, client.ExecOptions{Argv: []string{"pidof", "sleep"}, Stdout: io.Discard})
			if err == nil && ex.Code == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sleep does not run in the terminal: %+v %v; terminal shows %q", ex, err, out.String())
			}
		}
		step("\x03", "^C") // Ctrl-C reaches the guest's terminal and interrupts sleep
		step("echo status=$?\n", "status=130")
		io.WriteString(inW, "exit 7\n")
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("shell did not exit")
		}
		if err != nil || ex.Code != 7 {
			t.Fatalf("%+v %v", ex, err)
		}
	})

	t.Run("user, env and workdir", func(t *testing.T) {
		if got := e.mustExec("a", "id", "-un"); got != "root\n" {
			t.Errorf("default user %q", got)
		}
		r := e.run("exec", "-u", "nobody", "-w", "/tmp", "-e", "X=1", "a", "--", "sh", "-c", "id -u; pwd; echo $X $HOME")
		if r.code != 0 || r.stdout != "65534\n/tmp\n1 /nonexistent\n" {
			t.Errorf("%+v", r)
		}
		if r := e.run("exec", "-u", "nobody", "a", "--", "cat", "/mnt/secrets/agent-token"); r.code == 0 {
			t.Errorf("an unprivileged guest user read the agent token")
		}
		if r := e.run("exec", "-u", "ghost", "a", "--", "true"); r.code != 126 || !strings.Contains(r.stderr, "not found") {
			t.Errorf("unknown user: %+v", r)
		}
	})

	t.Run("ten execs and a copy at once", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 11)
		payload := filepath.Join(t.TempDir(), "payload")
		data := make([]byte, 16<<20)
		rand.Read(data)
		os.WriteFile(payload, data, 0o644)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := cl.CopyIn(ctx, payload, "/tmp/concurrent.bin")
			if err == nil {
				var out bytes.Buffer
				sum := sha256.Sum256(data)
				_, err = cl.Exec(ctx, client.ExecOptions{Argv: []string{"sha256sum", "/tmp/concurrent.bin"}, Stdout: &out})
				if err == nil && !strings.HasPrefix(out.String(), hex.EncodeToString(sum[:])) {
					err = fmt.Errorf("copied file differs: %s", out.String())
				}
			}
			errs <- err
		}()
		for i := 0; i < 10; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var out bytes.Buffer
				ex, err := cl.Exec(ctx, client.ExecOptions{Argv: []string{"sh", "-c", fmt.Sprintf("sleep 0.%d; echo %d", i, i)}, Stdout: &out})
				if err == nil && (ex.Code != 0 || out.String() != fmt.Sprintf("%d\n", i)) {
					err = fmt.Errorf("exec %d: %+v %q", i, ex, out.String())
				}
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("wrong token refused", func(t *testing.T) {
		v := e.vm("a")
		bad := client.NewHybrid(filepath.Join(e.root, "vms", v.ID, "agent.sock"), []byte("not-the-token-of-this-vm"))
		if _, err := bad.Ping(ctx); !errors.Is(err, proto.ErrAuth) {
			t.Fatalf("got %v", err)
		}
	})

	t.Run("clock skew goes through the challenge", func(t *testing.T) {
		skewed := e.agentClient("a", client.WithClock(func() time.Time { return time.Now().Add(-2 * time.Hour) }))
		if _, err := skewed.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("host re-links after the link breaks", func(t *testing.T) {
		v := e.vm("a")
		ctl := filepath.Join(e.root, "vms", v.ID, "ctl.sock")
		c, err := net.Dial("unix", ctl)
		if err != nil {
			t.Fatal(err)
		}
		json.NewEncoder(c).Encode(map[string]string{"op": "relink"})
		io.ReadAll(c)
		c.Close()
		if got := e.mustExec("a", "echo", "still-here"); got != "still-here\n" {
			t.Fatalf("after relink: %q", got)
		}
	})

	t.Run("inspect", func(t *testing.T) {
		var v struct {
			Name  string `json:"name"`
			Guest struct {
				AgentVersion string        `json:"agent_version"`
				Mounts       []proto.Mount `json:"mounts"`
				MemTotalKiB  int64         `json:"mem_total_kib"`
				UptimeSec    float64       `json:"uptime_sec"`
			} `json:"guest"`
		}
		out := e.must("inspect", "--json", "a")
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatal(err)
		}
		if v.Name != "a" || v.Guest.AgentVersion == "" || v.Guest.MemTotalKiB == 0 || len(v.Guest.Mounts) < 5 || v.Guest.UptimeSec <= 0 {
			t.Fatalf("%s", out)
		}
		token, _ := os.ReadFile(filepath.Join(e.root, "vms", e.vm("a").ID, "token"))
		if strings.Contains(out, strings.TrimSpace(string(token))) {
			t.Fatal("inspect shows the agent token")
		}
	})
}

type countingWriter int64

func (c *countingWriter) Write(p []byte) (int, error) {
	*c += countingWriter(len(p))
	return len(p), nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestForward serves HTTP from the guest with busybox httpd and reaches it through
// `mvmctl forward` and `up -p`, on a VM with no network at all.
func TestForward(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	port := freeTCPPort(t, e)
	e.must("up", "-d", "--name", "f", "--network", "none", "-p", fmt.Sprintf("%d:80", port))
	e.mustExec("f", "sh", "-c", "mkdir -p /srv && echo served-by-guest > /srv/index.html && httpd -p 80 -h /srv")
	get := e.httpGet
	if out, err := get(port); err != nil || out != "served-by-guest\n" {
		t.Fatalf("up -p: %q %v", out, err)
	}
	// Many connections at once.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, err := get(port); err != nil || out != "served-by-guest\n" {
				t.Errorf("concurrent get: %q %v", out, err)
			}
		}()
	}
	wg.Wait()
	// A port in use is a clear error, before anything else happens.
	if r := e.run("up", "-d", "--name", "g", "--network", "none", "-p", fmt.Sprintf("%d:80", port)); r.code == 0 || !strings.Contains(r.stderr, "already in use") {
		t.Errorf("port in use: %+v", r)
	}
	fport := freeTCPPort(t, e)
	cmd, _, errb := e.start("forward", "f", "-p", fmt.Sprintf("%d:80", fport))
	defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(errb.String(), "Forwarding") {
		if time.Now().After(deadline) {
			t.Fatalf("forward did not start: %s", errb.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := get(fport); err != nil || out != "served-by-guest\n" {
		t.Fatalf("forward: %q %v", out, err)
	}
	if r := e.run("forward", "f", "-p", fmt.Sprintf("%d:80", fport)); r.code == 0 || !strings.Contains(r.stderr, "already in use") {
		t.Errorf("forward on a busy port: %+v", r)
	}
}

// freeTCPPort finds a port free in the test's namespace.
func freeTCPPort(t *testing.T, e *env) int {
	t.Helper()
	var port int
	err := e.inNSDo(func() error {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		port = l.Addr().(*net.TCPAddr).Port
		return l.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	return port
}
