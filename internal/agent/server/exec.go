package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mvm-dev/mvm/internal/agent/proto"
)

// DefaultPath is the PATH of exec'd processes unless the request sets one. PID 1 gets
// no PATH from the kernel, so the agent must supply it.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Exit codes for failures to start, as docker uses them.
const (
	CodeCannotRun = 126
	CodeNotFound  = 127
)

// drainGrace is how long output is still forwarded after the process exits, for
// background children that hold the pipes open.
const drainGrace = 2 * time.Second

func defaultEnv() []string {
	return []string{"PATH=" + DefaultPath, "HOME=/root", "TERM=xterm", "LANG=C.UTF-8"}
}

// MergeEnv overlays request entries on the defaults; a later KEY wins.
func MergeEnv(base, over []string) []string {
	idx := map[string]int{}
	out := make([]string, 0, len(base)+len(over))
	for _, kv := range append(append([]string(nil), base...), over...) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			continue
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	return out
}

func envValue(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// LookPath resolves argv[0] against PATH (relative names and PATH entries against
// cwd) and returns the exit code that a failure maps to.
func LookPath(name, cwd string, env []string) (string, int, error) {
	check := func(p string) (int, error) {
		st, err := os.Stat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return CodeNotFound, fmt.Errorf("%s: no such file or directory", p)
		case err != nil:
			return CodeCannotRun, err
		case st.IsDir():
			return CodeCannotRun, fmt.Errorf("%s: is a directory", p)
		case st.Mode()&0o111 == 0:
			return CodeCannotRun, fmt.Errorf("%s: permission denied (not executable)", p)
		}
		return 0, nil
	}
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(cwd, p)
	}
	if strings.Contains(name, "/") {
		code, err := check(abs(name))
		return abs(name), code, err
	}
	var firstErr error
	firstCode := CodeNotFound
	for _, dir := range filepath.SplitList(envValue(env, "PATH")) {
		if dir == "" {
			dir = "."
		}
		p := abs(filepath.Join(dir, name))
		code, err := check(p)
		if err == nil {
			return p, 0, nil
		}
		if code == CodeCannotRun && firstErr == nil {
			firstErr, firstCode = err, code
		}
	}
	if firstErr != nil {
		return "", firstCode, firstErr
	}
	return "", CodeNotFound, fmt.Errorf("%q: executable file not found in $PATH", name)
}

func startErrorCode(err error) int {
	switch {
	case errors.Is(err, syscall.ENOENT):
		return CodeNotFound
	default:
		return CodeCannotRun
	}
}

// execIO is the plumbing of one process: what the child gets, what we read and write.
type execIO struct {
	child   [3]*os.File // the child's stdin, stdout, stderr; closed here once it started
	outputs []output    // read ends forwarded to the host
	stdin   *os.File    // write end of the child's input, nil without -i
	pty     *os.File    // the terminal's master side, for resizes

	mu     sync.Mutex
	reaped bool // once the process is reaped its PID (and group) may belong to another
}

// signal signals the process group, unless the process was reaped already.
func (x *execIO) signal(pid int, sig unix.Signal) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !x.reaped {
		_ = unix.Kill(-pid, sig)
	}
}

func (x *execIO) markReaped() {
	x.mu.Lock()
	x.reaped = true
	x.mu.Unlock()
}

type output struct {
	f *os.File
	t proto.Type
}

func (x *execIO) closeChild() {
	for _, f := range x.child {
		if f != nil {
			f.Close()
		}
	}
}

func (x *execIO) closeAll() {
	x.closeChild()
	for _, o := range x.outputs {
		o.f.Close()
	}
	if x.stdin != nil && x.stdin != x.pty {
		x.stdin.Close()
	}
}

// newPipes gives the child /dev/null or a pipe as stdin and pipes as stdout/stderr.
func newPipes(withStdin bool) (*execIO, error) {
	x := &execIO{}
	if withStdin {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		x.child[0], x.stdin = r, w
	} else {
		null, err := os.Open(os.DevNull)
		if err != nil {
			return nil, err
		}
		x.child[0] = null
	}
	for i, t := range []proto.Type{proto.TStdout, proto.TStderr} {
		r, w, err := os.Pipe()
		if err != nil {
			x.closeAll()
			return nil, err
		}
		x.child[i+1] = w
		x.outputs = append(x.outputs, output{r, t})
	}
	return x, nil
}

// newPTY gives the child a pseudo-terminal for stdin, stdout and stderr.
func newPTY(rows, cols uint16) (*execIO, error) {
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		master.Close()
		return nil, fmt.Errorf("unlock pty: %w", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		master.Close()
		return nil, fmt.Errorf("pty number: %w", err)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, fmt.Errorf("open pty: %w", err)
	}
	if rows > 0 && cols > 0 {
		_ = unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	}
	return &execIO{child: [3]*os.File{slave, nil, nil}, outputs: []output{{master, proto.TStdout}}, stdin: master, pty: master}, nil
}

func (s *Server) exec(ctx context.Context, pc *proto.Conn, req *proto.ExecRequest) {
	fail := func(code int, msg string) {
		_ = pc.WriteJSON(proto.TResponse, proto.Response{Error: msg, Code: code})
	}
	env := MergeEnv(defaultEnv(), req.Env)
	var cred *syscall.Credential
	if req.User != "" {
		acc, err := lookupUser(req.User, "/etc/passwd", "/etc/group")
		if err != nil {
			fail(CodeCannotRun, err.Error())
			return
		}
		cred = acc.credential()
		base := []string{"HOME=" + acc.home}
		if acc.name != "" {
			base = append(base, "USER="+acc.name, "LOGNAME="+acc.name)
		}
		env = MergeEnv(MergeEnv(defaultEnv(), base), req.Env)
	}
	cwd := req.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if st, err := os.Stat(cwd); err != nil || !st.IsDir() {
		fail(CodeCannotRun, fmt.Sprintf("working directory %q does not exist", cwd))
		return
	}
	path, code, err := LookPath(req.Argv[0], cwd, env)
	if err != nil {
		fail(code, err.Error())
		return
	}
	var x *execIO
	if req.TTY {
		x, err = newPTY(req.Rows, req.Cols)
	} else {
		x, err = newPipes(req.Stdin)
	}
	if err != nil {
		fail(CodeCannotRun, err.Error())
		return
	}
	attr := &syscall.SysProcAttr{Setsid: true, Credential: cred}
	files := x.child[:]
	if req.TTY {
		attr.Setctty, attr.Ctty = true, 0
		files = []*os.File{x.child[0], x.child[0], x.child[0]}
	}
	proc, waitCh, err := s.Reaper.Start(path, req.Argv, &os.ProcAttr{Dir: cwd, Env: env, Files: files, Sys: attr})
	x.closeChild() // the child has its copies
	if err != nil {
		x.closeAll()
		fail(startErrorCode(err), err.Error())
		return
	}
	defer proc.Release()
	pid := proc.Pid
	if err := pc.WriteJSON(proto.TResponse, proto.Response{OK: true, PID: pid}); err != nil {
		x.signal(pid, unix.SIGKILL)
	}

	var pumps sync.WaitGroup
	for _, o := range x.outputs {
		pumps.Add(1)
		go func() {
			defer pumps.Done()
			buf := pumpBuffers.Get().(*[]byte)
			defer pumpBuffers.Put(buf)
			hostOK := true
			for {
				n, err := o.f.Read(*buf)
				if n > 0 && hostOK {
					// After the host is gone keep draining, so the process never blocks on a full pipe.
					hostOK = pc.WriteData(o.t, (*buf)[:n]) == nil
				}
				if err != nil {
					return // EOF, or EIO from a terminal whose last user closed it
				}
			}
		}()
	}

	hostGone := make(chan struct{})
	go s.readHostFrames(pc, pid, x, hostGone)

	var timeout <-chan time.Time
	if req.TimeoutMs > 0 {
		t := time.NewTimer(time.Duration(req.TimeoutMs) * time.Millisecond)
		defer t.Stop()
		timeout = t.C
	}
	timedOut := false
	var ws unix.WaitStatus
	var hangupKill <-chan time.Time
wait:
	for {
		select {
		case ws = <-waitCh:
			x.markReaped()
			break wait
		case <-timeout:
			timedOut = true
			timeout = nil
			x.signal(pid, unix.SIGKILL)
		case <-hostGone:
			hostGone = nil
			// Like a hung-up terminal: ask the group to stop, then make sure.
			x.signal(pid, unix.SIGHUP)
			hangupKill = time.After(2 * time.Second)
		case <-hangupKill:
			x.signal(pid, unix.SIGKILL)
		case <-ctx.Done():
			x.signal(pid, unix.SIGKILL)
		}
	}

	drained := make(chan struct{})
	go func() { pumps.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(drainGrace):
	}
	x.closeAll()
	<-drained

	exit := proto.Exit{TimedOut: timedOut}
	switch {
	case ws.Exited():
		exit.Code = ws.ExitStatus()
	case ws.Signaled():
		exit.Signal = int(ws.Signal())
		exit.Code = 128 + exit.Signal
	}
	if timedOut {
		exit.Error = fmt.Sprintf("timed out after %s and was killed", time.Duration(req.TimeoutMs)*time.Millisecond)
	}
	_ = pc.WriteJSON(proto.TExit, exit)
}

// pumpBuffers are reused across execs: under emulation every allocation the garbage
// collector has to chase is paid for on the guest's only vCPU.
var pumpBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// readHostFrames takes the host's frames until it stops sending: stdin goes to a
// feeder goroutine, signals and resizes act at once. It never blocks on the command,
// so a command that does not read its input still gets its signals, and a host that
// goes away is noticed (the host keeps within proto.StdinWindow of what the feeder
// acknowledged, so what it buffers is bounded).
func (s *Server) readHostFrames(pc *proto.Conn, pid int, x *execIO, hostGone chan<- struct{}) {
	var feed *stdinFeed
	if x.stdin != nil {
		feed = newStdinFeed(pc, x)
		defer feed.stop()
	}
	for {
		f, err := pc.Read()
		if err != nil {
			// EOF included: the host ends input with TStdinEOF, so a closed stream
			// means mvmctl is gone (killed, or its terminal dropped).
			close(hostGone)
			return
		}
		switch f.Type {
		case proto.TStdin:
			if feed != nil && !feed.push(f.Payload) {
				close(hostGone) // a host that ignores the window is not one we serve
				return
			}
		case proto.TStdinEOF:
			if feed != nil {
				feed.end()
			}
		case proto.TSignal:
			var sig proto.Signal
			if proto.Decode(f, proto.TSignal, &sig) == nil && sig.Signal > 0 && sig.Signal < 65 {
				x.signal(pid, unix.Signal(sig.Signal))
			}
		case proto.TResize:
			var rs proto.Resize
			if x.pty != nil && proto.Decode(f, proto.TResize, &rs) == nil && rs.Rows > 0 && rs.Cols > 0 {
				_ = unix.IoctlSetWinsize(int(x.pty.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rs.Rows, Col: rs.Cols})
			}
		default:
			close(hostGone)
			return
		}
	}
}

// stdinFeed writes the host's stdin to the command from a buffer of at most
// proto.StdinWindow bytes, and tells the host (TWindow) as room comes free.
type stdinFeed struct {
	pc *proto.Conn
	x  *execIO

	mu      sync.Mutex
	cond    *sync.Cond
	buf     []byte
	eof     bool // the host ended its input: close the command's after buf
	stopped bool // the exec is over, or the host gone
	done    chan struct{}
}

// stdinPiece is the most written to the command before room is given back.
const stdinPiece = 64 << 10

func newStdinFeed(pc *proto.Conn, x *execIO) *stdinFeed {
	f := &stdinFeed{pc: pc, x: x, done: make(chan struct{})}
	f.cond = sync.NewCond(&f.mu)
	go f.run()
	return f
}

// push queues stdin; false when the host sent more than its window.
func (f *stdinFeed) push(p []byte) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.buf)+len(p) > proto.StdinWindow {
		return false
	}
	f.buf = append(f.buf, p...)
	f.cond.Signal()
	return true
}

// end closes the command's input once what is queued is written.
func (f *stdinFeed) end() {
	f.mu.Lock()
	f.eof = true
	f.cond.Signal()
	f.mu.Unlock()
}

// stop ends the feeder. A write blocked on a command that does not read is ended
// by closing its input (pipes only: a terminal's master is also the output, closed
// when the exec ends).
func (f *stdinFeed) stop() {
	f.mu.Lock()
	f.stopped = true
	f.cond.Signal()
	f.mu.Unlock()
	if f.x.stdin != f.x.pty {
		f.x.stdin.Close()
	}
	<-f.done
}

func (f *stdinFeed) run() {
	defer close(f.done)
	stdin := f.x.stdin
	broken := false // the command closed its input: drop what comes, keep the host going
	var out []byte
	for {
		f.mu.Lock()
		for len(f.buf) == 0 && !f.eof && !f.stopped {
			f.cond.Wait()
		}
		if f.stopped {
			f.mu.Unlock()
			return
		}
		if len(f.buf) == 0 { // eof
			f.mu.Unlock()
			if stdin == f.x.pty {
				// A terminal's master is also the output: end input with its EOF key.
				_, _ = stdin.Write([]byte{4})
			} else {
				stdin.Close()
			}
			return
		}
		n := min(len(f.buf), stdinPiece)
		out = append(out[:0], f.buf[:n]...)
		f.buf = f.buf[:copy(f.buf, f.buf[n:])]
		f.mu.Unlock()
		if !broken {
			if _, err := stdin.Write(out); err != nil {
				broken = true
			}
		}
		if f.pc.WriteJSON(proto.TWindow, proto.Window{Bytes: int64(n)}) != nil {
			return // the host is gone
		}
	}
}
