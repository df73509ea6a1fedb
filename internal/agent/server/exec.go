package server

import (
	"context"
	"errors"
	"fmt"
	"io"
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

// LookPath resolves argv[0] against PATH and returns the exit code that a failure maps to.
func LookPath(name string, env []string) (string, int, error) {
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
	if strings.Contains(name, "/") {
		code, err := check(name)
		return name, code, err
	}
	var firstErr error
	firstCode := CodeNotFound
	for _, dir := range filepath.SplitList(envValue(env, "PATH")) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
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

func (s *Server) exec(ctx context.Context, pc *proto.Conn, req *proto.ExecRequest) {
	env := MergeEnv(defaultEnv(), req.Env)
	path, code, err := LookPath(req.Argv[0], env)
	if err != nil {
		_ = pc.WriteJSON(proto.TResponse, proto.Response{Error: err.Error(), Code: code})
		return
	}
	cwd := req.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if st, err := os.Stat(cwd); err != nil || !st.IsDir() {
		_ = pc.WriteJSON(proto.TResponse, proto.Response{Error: fmt.Sprintf("working directory %q does not exist", cwd), Code: CodeCannotRun})
		return
	}

	var files [3]*os.File
	var parentEnds []*os.File
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			if f != nil {
				f.Close()
			}
		}
	}
	var stdinW *os.File
	if req.Stdin {
		r, w, err := os.Pipe()
		if err != nil {
			_ = pc.WriteJSON(proto.TResponse, proto.Response{Error: err.Error(), Code: CodeCannotRun})
			return
		}
		files[0], stdinW = r, w
	} else {
		null, err := os.Open(os.DevNull)
		if err != nil {
			_ = pc.WriteJSON(proto.TResponse, proto.Response{Error: err.Error(), Code: CodeCannotRun})
			return
		}
		files[0] = null
	}
	outR, outW, err1 := os.Pipe()
	errR, errW, err2 := os.Pipe()
	if err := errors.Join(err1, err2); err != nil {
		closeAll([]*os.File{files[0], stdinW, outR, outW, errR, errW})
		_ = pc.WriteJSON(proto.TResponse, proto.Response{Error: err.Error(), Code: CodeCannotRun})
		return
	}
	files[1], files[2] = outW, errW
	parentEnds = []*os.File{outR, errR}

	proc, waitCh, err := s.Reaper.Start(path, req.Argv, &os.ProcAttr{
		Dir: cwd, Env: env, Files: files[:],
		Sys: &syscall.SysProcAttr{Setsid: true},
	})
	closeAll(files[:]) // the child has its copies
	if err != nil {
		closeAll(parentEnds)
		if stdinW != nil {
			stdinW.Close()
		}
		_ = pc.WriteJSON(proto.TResponse, proto.Response{Error: err.Error(), Code: startErrorCode(err)})
		return
	}
	defer proc.Release()
	pid := proc.Pid
	if err := pc.WriteJSON(proto.TResponse, proto.Response{OK: true, PID: pid}); err != nil {
		_ = unix.Kill(-pid, unix.SIGKILL)
	}

	var pumps sync.WaitGroup
	pump := func(r *os.File, t proto.Type) {
		defer pumps.Done()
		buf := make([]byte, 64<<10)
		hostOK := true
		for {
			n, err := r.Read(buf)
			if n > 0 && hostOK {
				// After the host is gone keep draining, so the process never blocks on a full pipe.
				hostOK = pc.WriteData(t, buf[:n]) == nil
			}
			if err != nil {
				return
			}
		}
	}
	pumps.Add(2)
	go pump(outR, proto.TStdout)
	go pump(errR, proto.TStderr)

	hostGone := make(chan struct{})
	go s.readHostFrames(pc, pid, stdinW, hostGone)

	var timeout <-chan time.Time
	if req.TimeoutMs > 0 {
		t := time.NewTimer(time.Duration(req.TimeoutMs) * time.Millisecond)
		defer t.Stop()
		timeout = t.C
	}
	timedOut := false
	var ws unix.WaitStatus
wait:
	for {
		select {
		case ws = <-waitCh:
			break wait
		case <-timeout:
			timedOut = true
			timeout = nil
			_ = unix.Kill(-pid, unix.SIGKILL)
		case <-hostGone:
			hostGone = nil
			// Like a hung-up terminal: ask the group to stop, then make sure.
			_ = unix.Kill(-pid, unix.SIGHUP)
			go func() {
				time.Sleep(2 * time.Second)
				_ = unix.Kill(-pid, unix.SIGKILL)
			}()
		case <-ctx.Done():
			_ = unix.Kill(-pid, unix.SIGKILL)
		}
	}

	drained := make(chan struct{})
	go func() { pumps.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(drainGrace):
	}
	closeAll(parentEnds)
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

// readHostFrames forwards stdin and signals until the host stops sending.
func (s *Server) readHostFrames(pc *proto.Conn, pid int, stdin *os.File, hostGone chan<- struct{}) {
	defer func() {
		if stdin != nil {
			stdin.Close()
		}
	}()
	for {
		f, err := pc.Read()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				close(hostGone)
			}
			return
		}
		switch f.Type {
		case proto.TStdin:
			if stdin != nil {
				if _, err := stdin.Write(f.Payload); err != nil {
					stdin.Close()
					stdin = nil
				}
			}
		case proto.TStdinEOF:
			if stdin != nil {
				stdin.Close()
				stdin = nil
			}
		case proto.TSignal:
			var sig proto.Signal
			if proto.Decode(f, proto.TSignal, &sig) == nil && sig.Signal > 0 && sig.Signal < 65 {
				_ = unix.Kill(-pid, unix.Signal(sig.Signal))
			}
		default:
			close(hostGone)
			return
		}
	}
}
