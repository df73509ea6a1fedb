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
	offset := int64(len(cur))
	buf := make([]byte, 64<<10)
	for {
		f, err := os.Open(dir.ConsoleLog())
		if err == nil {
			st, _ := f.Stat()
			if st != nil && st.Size() < offset {
				offset = 0 // rotated: the new segment starts from scratch
			}
			if _, err := f.Seek(offset, io.SeekStart); err == nil {
				for {
					k, rerr := f.Read(buf)
					if k > 0 {
						if _, err := w.Write(buf[:k]); err != nil {
							f.Close()
							return err
						}
						offset += int64(k)
					}
					if rerr != nil {
						break
					}
				}
			}
			f.Close()
		}
		if !procutil.Held(dir.Lock()) {
			return nil // the VM is gone and everything it wrote has been shown
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(150 * time.Millisecond):
		}
	}
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
