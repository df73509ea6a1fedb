package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"time"
)

// qgaClient speaks to QEMU's guest agent (qemu-ga) over its virtio-serial port, as
// libvirt does: no greeting, one request at a time, and a guest-sync-delimited exchange
// first to skip stale replies.
type qgaClient struct {
	c  net.Conn
	br *bufio.Reader
}

func newQGA(ctx context.Context, c net.Conn) (*qgaClient, error) {
	q := &qgaClient{c: c, br: bufio.NewReaderSize(c, 1<<20)}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
		defer c.SetDeadline(time.Time{})
	}
	id := rand.Int64N(1 << 40)
	if _, err := fmt.Fprintf(c, "\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", id); err != nil {
		return nil, err
	}
	for {
		// Everything up to the 0xff the agent sends back is stale.
		if _, err := q.br.ReadBytes(0xff); err != nil {
			return nil, fmt.Errorf("qemu-ga sync: %w", err)
		}
		line, err := q.br.ReadBytes('\n')
		if err != nil {
			return nil, err
		}
		var r struct {
			Return int64 `json:"return"`
		}
		if json.Unmarshal(line, &r) == nil && r.Return == id {
			return q, nil
		}
	}
}

func (q *qgaClient) call(cmd string, args any, out any) error {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	raw, _ := json.Marshal(req)
	if _, err := q.c.Write(append(raw, '\n')); err != nil {
		return err
	}
	return q.readReply(out)
}

func (q *qgaClient) readReply(out any) error {
	line, err := q.br.ReadBytes('\n')
	if err != nil {
		return err
	}
	var r struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(line, &r); err != nil {
		return fmt.Errorf("qemu-ga reply: %w", err)
	}
	if r.Error != nil {
		return fmt.Errorf("qemu-ga: %s: %s", r.Error.Class, r.Error.Desc)
	}
	if out != nil {
		return json.Unmarshal(r.Return, out)
	}
	return nil
}

// exec runs a command to its end the way qemu-ga allows: guest-exec, then
// guest-exec-status polled every millisecond until it reports the exit.
func (q *qgaClient) exec(path string, args ...string) (int, error) {
	if args == nil {
		args = []string{} // qemu-ga wants an array, not null
	}
	var started struct {
		PID int `json:"pid"`
	}
	if err := q.call("guest-exec", map[string]any{"path": path, "arg": args, "capture-output": true}, &started); err != nil {
		return 0, err
	}
	for {
		var st struct {
			Exited   bool `json:"exited"`
			ExitCode int  `json:"exitcode"`
		}
		if err := q.call("guest-exec-status", map[string]any{"pid": started.PID}, &st); err != nil {
			return 0, err
		}
		if st.Exited {
			return st.ExitCode, nil
		}
		time.Sleep(time.Millisecond)
	}
}

// writeFile writes data to a guest file with guest-file-write in chunks.
func (q *qgaClient) writeFile(path string, r io.Reader, chunk int) (int64, error) {
	var h int
	if err := q.call("guest-file-open", map[string]any{"path": path, "mode": "w"}, &h); err != nil {
		return 0, err
	}
	var total int64
	buf := make([]byte, chunk)
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			// Built by hand: json.Marshal of the base64 would copy it once more.
			var req bytes.Buffer
			fmt.Fprintf(&req, `{"execute":"guest-file-write","arguments":{"handle":%d,"buf-b64":"`, h)
			enc := base64.NewEncoder(base64.StdEncoding, &req)
			enc.Write(buf[:n])
			enc.Close()
			req.WriteString("\"}}\n")
			if _, err := q.c.Write(req.Bytes()); err != nil {
				return total, err
			}
			if err := q.readReply(nil); err != nil {
				return total, err
			}
			total += int64(n)
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
				break
			}
			return total, rerr
		}
	}
	return total, q.call("guest-file-close", map[string]any{"handle": h}, nil)
}

// readFile reads a guest file with guest-file-read in chunks.
func (q *qgaClient) readFile(path string, w io.Writer, chunk int) (int64, error) {
	var h int
	if err := q.call("guest-file-open", map[string]any{"path": path, "mode": "r"}, &h); err != nil {
		return 0, err
	}
	var total int64
	for {
		var r struct {
			Count int    `json:"count"`
			Buf   string `json:"buf-b64"`
			EOF   bool   `json:"eof"`
		}
		if err := q.call("guest-file-read", map[string]any{"handle": h, "count": chunk}, &r); err != nil {
			return total, err
		}
		b, err := base64.StdEncoding.DecodeString(r.Buf)
		if err != nil {
			return total, err
		}
		if _, err := w.Write(b); err != nil {
			return total, err
		}
		total += int64(len(b))
		if r.EOF || r.Count == 0 {
			break
		}
	}
	return total, q.call("guest-file-close", map[string]any{"handle": h}, nil)
}
