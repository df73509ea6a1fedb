package runtime

import (
	"context"
	"errors"
	"io"
	"os"
	"time"

	"github.com/mvm-dev/mvm/internal/procutil"
)

// Logs writes a VM's serial console log to w: the last n lines (all if n < 0), then,
// with follow, new output until the VM stops or ctx ends.
func (r *Runtime) Logs(ctx context.Context, name string, n int, follow bool, w io.Writer) error {
	rec, err := r.Get(name)
	if err != nil {
		return err
	}
	dir := r.Root.VM(rec.ID)
	old, _ := os.ReadFile(dir.ConsoleLogOld())
	cur, err := os.ReadFile(dir.ConsoleLog())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	all := append(old, cur...)
	if _, err := w.Write(tailLines(all, n)); err != nil {
		return err
	}
	if !follow {
		return nil
	}
	// Follow through the open file, so output written just before `down` removes the
	// VM's directory is still read; reopen by path only when the log was rotated.
	f, _ := os.Open(dir.ConsoleLog())
	if f != nil {
		defer func() { f.Close() }()
		if _, err := f.Seek(int64(len(cur)), io.SeekStart); err != nil {
			return err
		}
	}
	drain := func() error {
		if f == nil {
			return nil
		}
		_, err := io.Copy(w, f)
		return err
	}
	for {
		// Look at the owner before reading: once it is gone, this pass reads its last words.
		running := procutil.Held(dir.Lock())
		if err := drain(); err != nil {
			return err
		}
		if nf, err := os.Open(dir.ConsoleLog()); err == nil {
			if f == nil || !sameFile(f, nf) {
				if err := drain(); err != nil { // the rest of the rotated segment
					nf.Close()
					return err
				}
				if f != nil {
					f.Close()
				}
				f = nf
				if err := drain(); err != nil {
					return err
				}
			} else {
				nf.Close()
			}
		}
		if !running {
			return nil // the VM is gone and everything it wrote has been shown
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(150 * time.Millisecond):
		}
	}
}

func sameFile(a, b *os.File) bool {
	sa, err1 := a.Stat()
	sb, err2 := b.Stat()
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// tailLines returns the last n lines of b (all of b if n < 0).
func tailLines(b []byte, n int) []byte {
	if n < 0 {
		return b
	}
	if n == 0 {
		return nil
	}
	end := len(b)
	if end > 0 && b[end-1] == '\n' {
		end--
	}
	count := 0
	for i := end - 1; i >= 0; i-- {
		if b[i] == '\n' {
			count++
			if count == n {
				return b[i+1:]
			}
		}
	}
	return b
}
