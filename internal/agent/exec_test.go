package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/client"
)

// endless is stdin that never ends, as `yes | mvmctl exec -i` gives.
type endless struct{}

func (endless) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestExecSignalWithUnreadStdin: a command that does not read its input still gets
// the signals sent to mvmctl (the agent used to stop reading the stream once the
// command's input was full, and the host queued signals behind stdin).
func TestExecSignalWithUnreadStdin(t *testing.T) {
	if _, err := os.Stat("/dev/ptmx"); err != nil {
		t.Skip("no /dev/ptmx on this host")
	}
	sock, _ := stack(t, goodToken)
	cl := client.NewHybrid(sock, goodToken)
	for _, tty := range []bool{false, true} {
		t.Run(fmt.Sprint("tty=", tty), func(t *testing.T) {
			sigs := make(chan int, 1)
			go func() { time.Sleep(500 * time.Millisecond); sigs <- 15 }()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			ex, err := cl.Exec(ctx, client.ExecOptions{Argv: []string{"sleep", "20"}, Stdin: endless{}, Signals: sigs, TTY: tty})
			if err != nil || ex.Code != 128+15 || time.Since(start) > 5*time.Second {
				t.Fatalf("SIGTERM to a command not reading stdin: %+v %v after %v", ex, err, time.Since(start))
			}
		})
	}
}

// TestHostGoneWithUnreadStdin: the host going away is noticed, and the command hung
// up, even while the command does not read the input the host was sending.
func TestHostGoneWithUnreadStdin(t *testing.T) {
	sock, _ := stack(t, goodToken)
	cl := client.NewHybrid(sock, goodToken)
	pidFile := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := cl.Exec(ctx, client.ExecOptions{Argv: []string{"sh", "-c", "echo $$ > " + pidFile + "; exec sleep 30"}, Stdin: endless{}})
	if err == nil || time.Since(start) > 3*time.Second {
		t.Fatalf("exec outlived its context: %v after %v", err, time.Since(start))
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
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("command %d still runs after its host went away", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestExecLargeStdin: stdin well beyond the agent's window arrives whole and in order.
func TestExecLargeStdin(t *testing.T) {
	sock, _ := stack(t, goodToken)
	cl := client.NewHybrid(sock, goodToken)
	in := make([]byte, 8<<20+13)
	for i := range in {
		in[i] = byte(i * 13)
	}
	var out bytes.Buffer
	ex, err := cl.Exec(context.Background(), client.ExecOptions{Argv: []string{"sh", "-c", "sleep 0.2; cat"}, Stdin: bytes.NewReader(in), Stdout: &out})
	if err != nil || ex.Code != 0 || !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("%+v %v: %d bytes back of %d", ex, err, out.Len(), len(in))
	}
	// Input the command closes early is dropped, and the exec still ends.
	out.Reset()
	ex, err = cl.Exec(context.Background(), client.ExecOptions{Argv: []string{"sh", "-c", "head -c 5; exec 0<&-; sleep 0.3; echo done"},
		Stdin: bytes.NewReader(in), Stdout: &out})
	if err != nil || ex.Code != 0 || !strings.HasSuffix(out.String(), "done\n") {
		t.Fatalf("%+v %v %q", ex, err, out.String())
	}
}
