// Package proto is the wire protocol between the host and mvm-agent.
//
// Each agent connection (a vsock stream, or a yamux stream over the virtio-serial port)
// carries length-prefixed frames: a 4-byte big-endian payload length, a 1-byte frame
// type, then the payload. Control frames carry JSON; data frames (stdin, stdout, stderr)
// carry raw bytes, so bulk transfers cost no encoding. Every frame is size-limited and
// every connection starts with an HMAC handshake keyed by the per-VM token (see auth.go).
//
// We use our own framing rather than gRPC or ttrpc: the agent is PID 1 of a guest that
// boots under software emulation, where every megabyte of binary and every package
// initialiser costs boot time, and exec/cp/forward are streams that map directly onto
// one connection each, with flow control from the transport underneath.
package proto

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// Version is the protocol version. A peer refuses a different major version.
// 2: exec stdin is flow-controlled by the agent (TWindow).
// 3: an identify answer proves the new token (Identified.TokenMAC).
const Version = 3

// AgentPort is the vsock port the agent listens on (and the port named in the
// hybrid-vsock CONNECT line).
const AgentPort = 1024

// BulkPort is the hybrid-vsock port of the bulk channel: a second, unmultiplexed
// virtio-serial port (BulkPortName) that carries one copy out of the guest at a time,
// so file data can go from the guest's page cache to the host without being copied
// through the agent (sendfile). Each transfer starts with BulkMarker and its id.
const (
	BulkPort     = 1025
	BulkPortName = "mvm.bulk"
	BulkMarker   = "\xffMVMBULK1 "
)

// Frame size limits: control frames are JSON and small; data frames carry stream chunks.
const (
	MaxControlPayload = 64 << 10
	MaxDataPayload    = 1 << 20
	// MaxAuthPayload bounds the first frame of a connection, before the peer proved
	// anything: an unauthenticated peer cannot make the agent allocate more.
	MaxAuthPayload = 1 << 10
	headerLen      = 5
)

// Type identifies a frame.
type Type uint8

// Frame types. Values are part of the wire format: append, never renumber.
const (
	TChallenge Type = 1  // agent -> host: Challenge (only when the host's clock proof is refused)
	TAuth      Type = 2  // host -> agent: Auth
	TAuthOK    Type = 3  // agent -> host: AuthOK
	TRequest   Type = 4  // host -> agent: Request
	TResponse  Type = 5  // agent -> host: Response
	TStdin     Type = 6  // host -> agent: raw bytes
	TStdinEOF  Type = 7  // host -> agent: empty
	TStdout    Type = 8  // agent -> host: raw bytes
	TStderr    Type = 9  // agent -> host: raw bytes
	TExit      Type = 10 // agent -> host: Exit
	TSignal    Type = 11 // host -> agent: Signal
	TError     Type = 12 // either way: Error, then the connection closes
	TResize    Type = 13 // host -> agent: Resize (exec with a TTY)
	TDone      Type = 14 // either way: Done, the end of a copied stream with its digest
	TWindow    Type = 15 // agent -> host: Window, stdin the agent has passed on
)

func (t Type) String() string {
	names := [...]string{"", "challenge", "auth", "auth-ok", "request", "response", "stdin", "stdin-eof",
		"stdout", "stderr", "exit", "signal", "error", "resize", "done", "window"}
	if int(t) < len(names) && t != 0 {
		return names[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Data frames are named for exec; cp reuses them: TStdin carries what the host sends,
// TStdout what the agent sends.

// IsData reports whether a frame type carries raw bytes rather than JSON.
func (t Type) IsData() bool { return t == TStdin || t == TStdout || t == TStderr }

func (t Type) known() bool { return t >= TChallenge && t <= TWindow }

// MaxPayload is the size limit for a frame type.
func (t Type) MaxPayload() int {
	if t.IsData() {
		return MaxDataPayload
	}
	return MaxControlPayload
}

// ErrFrameTooLarge is returned for a frame over its type's size limit.
var ErrFrameTooLarge = errors.New("agent frame too large")

// Frame is one decoded frame.
type Frame struct {
	Type    Type
	Payload []byte
}

// ReadFrame reads one frame, refusing unknown types and oversized payloads before
// allocating for them.
func ReadFrame(r io.Reader) (Frame, error) { return ReadFrameLimit(r, 0) }

// ReadFrameLimit is ReadFrame with a tighter size limit (0: the type's own), for
// peers that have not authenticated yet.
func ReadFrameLimit(r io.Reader, limit int) (Frame, error) {
	var hdr [headerLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(hdr[:4])
	t := Type(hdr[4])
	if !t.known() {
		return Frame{}, fmt.Errorf("unknown agent frame type %d", hdr[4])
	}
	max := t.MaxPayload()
	if limit > 0 && limit < max {
		max = limit
	}
	if n > uint32(max) {
		return Frame{}, fmt.Errorf("%w: %s frame of %d bytes (limit %d)", ErrFrameTooLarge, t, n, max)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	return Frame{Type: t, Payload: p}, nil
}

// AppendFrame appends the encoding of a frame to b.
func AppendFrame(b []byte, t Type, payload []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	b = append(b, byte(t))
	return append(b, payload...)
}

// Conn reads and writes frames on a stream. Writes are safe from several goroutines
// (stdout and stderr pumps share one connection); reads belong to one goroutine.
type Conn struct {
	rw  io.ReadWriter
	r   *bufio.Reader
	wmu sync.Mutex
	buf []byte
}

// NewConn wraps a stream.
func NewConn(rw io.ReadWriter) *Conn {
	return &Conn{rw: rw, r: bufio.NewReaderSize(rw, 16<<10)}
}

// Read reads the next frame.
func (c *Conn) Read() (Frame, error) { return ReadFrame(c.r) }

// ReadLimit reads the next frame with a tighter size limit.
func (c *Conn) ReadLimit(limit int) (Frame, error) { return ReadFrameLimit(c.r, limit) }

// Raw returns the stream for use without frames (a forwarded connection after its
// request was answered): reads first drain what the frame reader had buffered.
func (c *Conn) Raw(conn net.Conn) net.Conn {
	if c.r.Buffered() == 0 {
		return conn
	}
	return &bufferedConn{Conn: conn, r: io.MultiReader(io.LimitReader(c.r, int64(c.r.Buffered())), conn)}
}

type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// CloseWrite half-closes when the underlying connection can.
func (b *bufferedConn) CloseWrite() error {
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return b.Conn.Close()
}

// WriteData writes a data frame, splitting payloads over the limit.
func (c *Conn) WriteData(t Type, p []byte) error {
	for len(p) > 0 {
		n := min(len(p), MaxDataPayload)
		if err := c.writeFrame(t, p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// DataWriter returns an io.Writer whose writes become data frames of type t.
func (c *Conn) DataWriter(t Type) io.Writer { return dataWriter{c, t} }

type dataWriter struct {
	c *Conn
	t Type
}

func (w dataWriter) Write(p []byte) (int, error) {
	if err := w.c.WriteData(w.t, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteEmpty writes a frame without payload, such as TStdinEOF.
func (c *Conn) WriteEmpty(t Type) error { return c.writeFrame(t, nil) }

// WriteControl writes a control frame whose JSON payload is already encoded (the
// handshake signs the exact bytes of the request).
func (c *Conn) WriteControl(t Type, payload []byte) error {
	if len(payload) > MaxControlPayload {
		return fmt.Errorf("%w: %s frame of %d bytes", ErrFrameTooLarge, t, len(payload))
	}
	return c.writeFrame(t, payload)
}

// WriteJSON writes a control frame with v encoded as JSON.
func (c *Conn) WriteJSON(t Type, v any) error {
	p, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s frame: %w", t, err)
	}
	if len(p) > MaxControlPayload {
		return fmt.Errorf("%w: %s frame of %d bytes", ErrFrameTooLarge, t, len(p))
	}
	return c.writeFrame(t, p)
}

func (c *Conn) writeFrame(t Type, p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.buf = AppendFrame(c.buf[:0], t, p)
	_, err := c.rw.Write(c.buf)
	if cap(c.buf) > 2*MaxDataPayload {
		c.buf = nil
	}
	return err
}

// Expect reads the next frame and decodes it into v if it has type t. A TError frame
// is returned as a *RemoteError.
func (c *Conn) Expect(t Type, v any) error {
	f, err := c.Read()
	if err != nil {
		return err
	}
	return Decode(f, t, v)
}

// Decode decodes a control frame of the wanted type into v.
func Decode(f Frame, want Type, v any) error {
	if f.Type == TError && want != TError {
		var e Error
		if err := json.Unmarshal(f.Payload, &e); err != nil {
			return fmt.Errorf("decode error frame: %w", err)
		}
		return &RemoteError{Code: e.Code, Message: e.Message}
	}
	if f.Type != want {
		return fmt.Errorf("agent protocol: got %s frame, want %s", f.Type, want)
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(f.Payload, v); err != nil {
		return fmt.Errorf("decode %s frame: %w", f.Type, err)
	}
	return nil
}
