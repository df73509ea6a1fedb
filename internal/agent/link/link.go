// Package link carries many agent streams over one virtio-serial port.
//
// A virtio-serial port is a single byte stream with awkward semantics: the guest reads
// EOF while no host is connected, bytes written while nobody listens reach the next
// host, and a restored snapshot resumes mid-conversation. So each host connection
// starts with an exchange that both sides can find in a stream of stale bytes:
//
//	host  -> guest: "\xffMVMSYNC1 " + 32 hex nonce + "\n"   (repeated until answered)
//	guest -> host:  "\xffMVMACK1 " + nonce + " " + agent version + "\n"   (each sync)
//	host  -> guest: "\xffMVMGO1 " + nonce + "\n"    (the first ack of ours; no sync after it)
//	guest -> host:  "\xffMVMREADY1 " + nonce + "\n" (no ack after it)
//
// Each side discards everything before the line it waits for, so syncs the host sent
// before the ack came (a live agent's session may swallow the first) and acks the
// guest gave them can never reach the other side's yamux. After the exchange both ends
// run a yamux session (host = client) whose streams each carry one agent connection,
// exactly as a vsock connection would.
package link

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

const (
	markerPrefix = "\xffMVM"
	syncMarker   = markerPrefix + syncKind + " "
	ackMarker    = "\xffMVMACK1 "
	goMarker     = markerPrefix + goKind + " "
	readyMarker  = "\xffMVMREADY1 "
	syncKind     = "SYNC1"
	goKind       = "GO1"
	nonceHex     = 32
	maxLineLen   = 128
)

// yamuxConfig is shared by both ends. Keepalives are off because a paused or snapshotted
// VM stops answering for arbitrary time and that must not kill the session; the write
// timeout is long for the same reason. The window is larger than the default so bulk
// streams are not throttled by round trips under emulation.
func yamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = false
	c.ConnectionWriteTimeout = 24 * time.Hour
	c.StreamOpenTimeout = 0
	c.MaxStreamWindowSize = 1 << 20
	c.LogOutput = io.Discard
	c.Logger = nil
	return c
}

// scanFor discards bytes from r until marker has been read. The marker's first byte
// (0xff) appears nowhere else in it, so a mismatch can restart matching at once.
func scanFor(r *bufio.Reader, marker string) error {
	matched := 0
	for matched < len(marker) {
		b, err := r.ReadByte()
		if err != nil {
			return err
		}
		switch {
		case b == marker[matched]:
			matched++
		case b == marker[0]:
			matched = 1
		default:
			matched = 0
		}
	}
	return nil
}

// readLine reads up to '\n' with a length limit.
func readLine(r *bufio.Reader) (string, error) {
	var sb strings.Builder
	for sb.Len() <= maxLineLen {
		b, err := r.ReadByte()
		if err != nil {
			return "", err
		}
		if b == '\n' {
			return sb.String(), nil
		}
		sb.WriteByte(b)
	}
	return "", errLineTooLong
}

var errLineTooLong = errors.New("link: sync line too long")

// ParseSync parses the rest of a sync line (after the marker): the nonce.
func ParseSync(line string) (string, error) {
	if len(line) != nonceHex {
		return "", fmt.Errorf("link: sync nonce has %d characters, want %d", len(line), nonceHex)
	}
	if _, err := hex.DecodeString(line); err != nil {
		return "", fmt.Errorf("link: sync nonce: %w", err)
	}
	return line, nil
}

// ParseAck parses the rest of an ack line: nonce and agent version.
func ParseAck(line string) (nonce, version string, err error) {
	nonce, version, ok := strings.Cut(line, " ")
	if !ok || version == "" {
		return "", "", errors.New("link: ack without agent version")
	}
	if _, err := ParseSync(nonce); err != nil {
		return "", "", err
	}
	return nonce, version, nil
}

// ParseHostLine parses what follows markerPrefix in a line from the host: a sync or a
// go, and its nonce.
func ParseHostLine(line string) (kind, nonce string, err error) {
	kind, rest, ok := strings.Cut(line, " ")
	if !ok || (kind != syncKind && kind != goKind) {
		return "", "", errors.New("link: not a sync or go line")
	}
	if nonce, err = ParseSync(rest); err != nil {
		return "", "", err
	}
	return kind, nonce, nil
}

// readerConn feeds yamux from our buffered reader (so bytes buffered during the sync are
// not lost) and writes straight to the port.
type readerConn struct {
	r io.Reader
	w io.Writer
}

func (c readerConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c readerConn) Write(p []byte) (int, error) { return c.w.Write(p) }
func (c readerConn) Close() error                { return nil }

// logf adapts slog for occasional link messages.
func logf(l *slog.Logger, msg string, args ...any) {
	if l != nil {
		l.Debug(msg, args...)
	}
}

// watchContext makes blocking reads on rw abandon when ctx ends, for ReadWriters that
// offer deadlines (net.Conn). The returned stop waits for a watcher that already fired
// before clearing the deadline: otherwise a late watcher could poison the connection
// after the caller has moved on.
type deadliner interface{ SetReadDeadline(time.Time) error }

func watchContext(ctx context.Context, rw any) (stop func()) {
	d, ok := rw.(deadliner)
	if !ok {
		return func() {}
	}
	var fired sync.WaitGroup
	fired.Add(1)
	stopFn := context.AfterFunc(ctx, func() {
		defer fired.Done()
		_ = d.SetReadDeadline(time.Unix(1, 0))
	})
	return func() {
		if stopFn() {
			fired.Done() // it will never run
		}
		fired.Wait()
		_ = d.SetReadDeadline(time.Time{})
	}
}
