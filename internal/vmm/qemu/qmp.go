package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
)

// QMP is a minimal client for QEMU's machine protocol: greeting, capabilities
// negotiation, commands matched to replies by id, and asynchronous events. It is
// written here because the Go QMP libraries are untagged or carry libvirt along; the
// protocol needs ~100 lines.
type QMP struct {
	conn    net.Conn
	wmu     sync.Mutex
	mu      sync.Mutex
	nextID  uint64
	pending map[string]chan qmpReply
	events  chan Event
	done    chan struct{}
	err     error
}

// Event is an asynchronous QMP event.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	ID    string          `json:"id"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
	QMP   json.RawMessage `json:"QMP"`
}

// DialQMP reads the greeting on conn and negotiates capabilities.
func DialQMP(ctx context.Context, conn net.Conn) (*QMP, error) {
	q := &QMP{conn: conn, pending: map[string]chan qmpReply{}, events: make(chan Event, 64), done: make(chan struct{})}
	greeting := make(chan error, 1)
	go q.readLoop(greeting)
	select {
	case err := <-greeting:
		if err != nil {
			return nil, fmt.Errorf("qmp greeting: %w", err)
		}
	case <-ctx.Done():
		conn.Close()
		return nil, ctx.Err()
	}
	if _, err := q.Execute(ctx, "qmp_capabilities", nil); err != nil {
		return nil, err
	}
	return q, nil
}

func (q *QMP) readLoop(greeting chan<- error) {
	defer close(q.done)
	defer close(q.events)
	sc := bufio.NewScanner(q.conn)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	first := true
	for sc.Scan() {
		var r qmpReply
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			continue
		}
		switch {
		case first && r.QMP != nil:
			first = false
			greeting <- nil
		case r.Event != "":
			select {
			case q.events <- Event{Name: r.Event, Data: r.Data}:
			default: // nobody listening fast enough; events are advisory
			}
		default:
			q.mu.Lock()
			ch := q.pending[r.ID]
			delete(q.pending, r.ID)
			q.mu.Unlock()
			if ch != nil {
				ch <- r
			}
		}
	}
	err := sc.Err()
	if err == nil {
		err = errors.New("qmp connection closed")
	}
	if first {
		greeting <- err
	}
	q.mu.Lock()
	q.err = err
	for id, ch := range q.pending {
		close(ch)
		delete(q.pending, id)
	}
	q.mu.Unlock()
}

// Execute runs a command and returns its "return" value.
func (q *QMP) Execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return q.execute(ctx, cmd, args, nil)
}

// ExecuteWithFile runs a command with a file descriptor attached (SCM_RIGHTS), as
// getfd and add-fd expect.
func (q *QMP) ExecuteWithFile(ctx context.Context, cmd string, args any, f *os.File) (json.RawMessage, error) {
	return q.execute(ctx, cmd, args, f)
}

func (q *QMP) execute(ctx context.Context, cmd string, args any, f *os.File) (json.RawMessage, error) {
	q.mu.Lock()
	if q.err != nil {
		q.mu.Unlock()
		return nil, q.err
	}
	q.nextID++
	id := fmt.Sprintf("mvm-%d", q.nextID)
	ch := make(chan qmpReply, 1)
	q.pending[id] = ch
	q.mu.Unlock()
	msg := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		msg["arguments"] = args
	}
	raw, _ := json.Marshal(msg)
	q.wmu.Lock()
	var err error
	if f != nil {
		uc, ok := q.conn.(*net.UnixConn)
		if !ok {
			err = errors.New("QMP connection cannot pass file descriptors")
		} else {
			_, _, err = uc.WriteMsgUnix(append(raw, '\n'), syscall.UnixRights(int(f.Fd())), nil)
		}
	} else {
		_, err = q.conn.Write(append(raw, '\n'))
	}
	q.wmu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return nil, fmt.Errorf("qmp %s: connection closed", cmd)
		}
		if r.Error != nil {
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, r.Error.Class, r.Error.Desc)
		}
		return r.Return, nil
	case <-ctx.Done():
		q.mu.Lock()
		delete(q.pending, id)
		q.mu.Unlock()
		return nil, ctx.Err()
	}
}

// Events delivers asynchronous events until the connection closes.
func (q *QMP) Events() <-chan Event { return q.events }

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }

// Status returns the run state ("running", "paused", "shutdown", ...).
func (q *QMP) Status(ctx context.Context) (string, error) {
	raw, err := q.Execute(ctx, "query-status", nil)
	if err != nil {
		return "", err
	}
	var s struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("qmp query-status: %w", err)
	}
	return s.Status, nil
}
