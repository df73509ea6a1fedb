package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/proto"
)

// ExecOptions describe a command to run in the guest.
type ExecOptions struct {
	Argv    []string
	Env     []string
	Cwd     string
	User    string
	Timeout time.Duration
	Stdin   io.Reader // nil: the process gets /dev/null (or, with TTY, a terminal nobody types on)
	Stdout  io.Writer
	Stderr  io.Writer // unused with TTY: a terminal has one output
	// TTY runs the command on a pseudo-terminal of Rows x Cols; Resize delivers later sizes.
	TTY        bool
	Rows, Cols uint16
	Resize     <-chan proto.Resize
	// Signals are forwarded to the command's process group.
	Signals <-chan int
}

// StartError means the command could not be started in the guest; Code is the exit
// code to report (126 cannot run, 127 not found).
type StartError struct {
	Code    int
	Message string
}

func (e *StartError) Error() string { return e.Message }

// Exec runs a command to completion, streaming its output as it comes.
func (cl *Client) Exec(ctx context.Context, o ExecOptions) (proto.Exit, error) {
	req := proto.Request{Op: proto.OpExec, Exec: &proto.ExecRequest{
		Argv: o.Argv, Env: o.Env, Cwd: o.Cwd, User: o.User, TimeoutMs: o.Timeout.Milliseconds(), Stdin: o.Stdin != nil,
		TTY: o.TTY, Rows: o.Rows, Cols: o.Cols,
	}}
	s, err := cl.open(ctx, req)
	if err != nil {
		return proto.Exit{}, err
	}
	defer s.Close()
	var resp proto.Response
	if err := s.pc.Expect(proto.TResponse, &resp); err != nil {
		return proto.Exit{}, cl.ctxErr(ctx, err)
	}
	if !resp.OK {
		code := resp.Code
		if code == 0 {
			code = 126
		}
		return proto.Exit{}, &StartError{Code: code, Message: resp.Error}
	}
	done := make(chan struct{})
	defer close(done)
	// Stdin goes no further ahead of the agent than its window: the agent then never
	// has to stop reading the stream, so signals and resizes reach it (and the end of
	// the stream tells it we are gone) even while the command reads nothing.
	win := newWindow(proto.StdinWindow)
	defer win.close()
	if o.Stdin != nil {
		go func() {
			buf := make([]byte, proto.StdinWindow)
			for {
				n, err := o.Stdin.Read(buf)
				for p := buf[:n]; len(p) > 0; {
					k := win.take(len(p))
					if k == 0 || s.pc.WriteData(proto.TStdin, p[:k]) != nil {
						return // the exec is over
					}
					p = p[k:]
				}
				if err != nil {
					_ = s.pc.WriteEmpty(proto.TStdinEOF)
					return
				}
			}
		}()
	}
	if o.Resize != nil || o.Signals != nil {
		go func() {
			for {
				select {
				case rs, ok := <-o.Resize:
					if !ok {
						o.Resize = nil
						continue
					}
					_ = s.pc.WriteJSON(proto.TResize, rs)
				case sig, ok := <-o.Signals:
					if !ok {
						o.Signals = nil
						continue
					}
					_ = s.pc.WriteJSON(proto.TSignal, proto.Signal{Signal: sig})
				case <-done:
					return
				}
			}
		}()
	}
	stdout, stderr := orDiscard(o.Stdout), orDiscard(o.Stderr)
	for {
		f, err := s.pc.Read()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("agent closed the connection before the command finished")
			}
			return proto.Exit{}, cl.ctxErr(ctx, err)
		}
		switch f.Type {
		case proto.TStdout:
			if _, err := stdout.Write(f.Payload); err != nil {
				return proto.Exit{}, fmt.Errorf("write stdout: %w", err)
			}
		case proto.TStderr:
			if _, err := stderr.Write(f.Payload); err != nil {
				return proto.Exit{}, fmt.Errorf("write stderr: %w", err)
			}
		case proto.TWindow:
			var w proto.Window
			if err := proto.Decode(f, proto.TWindow, &w); err != nil {
				return proto.Exit{}, err
			}
			if err := w.Validate(); err != nil {
				return proto.Exit{}, fmt.Errorf("agent protocol: %w", err)
			}
			win.give(int(w.Bytes))
		case proto.TExit:
			var ex proto.Exit
			if err := proto.Decode(f, proto.TExit, &ex); err != nil {
				return proto.Exit{}, err
			}
			return ex, nil
		default:
			return proto.Exit{}, proto.Decode(f, proto.TExit, nil)
		}
	}
}

func (cl *Client) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// window counts the stdin the agent has room for.
type window struct {
	mu     sync.Mutex
	cond   *sync.Cond
	n, max int
	closed bool
}

func newWindow(n int) *window {
	w := &window{n: n, max: n}
	w.cond = sync.NewCond(&w.mu)
	return w
}

// take waits for room and takes up to want bytes of it; 0 once closed.
func (w *window) take(want int) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.n == 0 && !w.closed {
		w.cond.Wait()
	}
	if w.closed {
		return 0
	}
	k := min(want, w.n)
	w.n -= k
	return k
}

// give returns room (never more than the window: a confused agent gets no more).
func (w *window) give(n int) {
	w.mu.Lock()
	w.n = min(w.n+n, w.max)
	w.cond.Signal()
	w.mu.Unlock()
}

func (w *window) close() {
	w.mu.Lock()
	w.closed = true
	w.cond.Broadcast()
	w.mu.Unlock()
}
