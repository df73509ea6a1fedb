package bulk

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/archive"
)

func TestWriterDigestMatchesReader(t *testing.T) {
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan []byte, 1)
	go func() {
		c, _ := l.Accept()
		b, _ := io.ReadAll(c)
		got <- b
	}()
	c, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "f")
	os.WriteFile(f, bytes.Repeat([]byte("x"), 300000), 0o644)
	id := NewID()
	c.Write([]byte("stale bytes \xffMVMBULK1 wrong\n"))
	w, err := NewWriter(c.(*net.UnixConn), id)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := archive.PackWith(t.Context(), w, f, archive.PackOptions{Content: w.SendFile}); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	c.Close()
	stream := <-got
	br := bufio.NewReader(bytes.NewReader(stream))
	if err := SkipToMarker(br, id); err != nil {
		t.Fatal(err)
	}
	hr := archive.NewHashingReader(br)
	io.Copy(io.Discard, hr)
	if err := hr.Verify(w.Sum(), w.N()); err != nil {
		t.Fatal(err)
	}
	if !ValidID(id) || ValidID("nothex-"+strings.Repeat("a", 25)) || ValidID("ab") {
		t.Fatal("ValidID")
	}
}

// channel returns a connected pair of unix sockets: the writer's end and the reader's.
func channel(t *testing.T) (*net.UnixConn, net.Conn) {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	c, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	t.Cleanup(func() { c.Close(); peer.Close() })
	return c.(*net.UnixConn), peer
}

// TestSendFileShrunk: a file cut short after its size was taken (logrotate's
// copytruncate, "> file") fails the copy; hashing through a mapping of it raised
// SIGBUS instead, which killed the whole process (the guest's PID 1).
func TestSendFileShrunk(t *testing.T) {
	c, peer := channel(t)
	go io.Copy(io.Discard, peer)
	f, err := os.Create(filepath.Join(t.TempDir(), "shrink"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Write(make([]byte, 1<<20))
	st, _ := f.Stat()
	f.Truncate(4096)
	w, err := NewWriter(c, NewID())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.SendFile(f, st.Size()); !errors.Is(err, ErrChanged) {
		t.Fatalf("SendFile of a shrunk file: %v, want %v", err, ErrChanged)
	}
}

// TestSendFileChangedInPlace: a file written to while it is sent makes the digest
// disagree; the receiver's error says the file changed, not that the channel is corrupt.
func TestSendFileChangedInPlace(t *testing.T) {
	c, peer := channel(t)
	path := filepath.Join(t.TempDir(), "f")
	const size = 8 << 20 // far more than the socket buffers: the sender blocks
	os.WriteFile(path, bytes.Repeat([]byte("a"), size), 0o644)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	id := NewID()
	w, err := NewWriter(c, id)
	if err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() {
		sent <- w.SendFile(f, size)
		c.Close()
	}()
	time.Sleep(200 * time.Millisecond) // the sender is stuck in its first chunk
	// In place, as an editor that rewrites a file does not (it renames): same inode.
	g, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	g.Write(bytes.Repeat([]byte("b"), size))
	g.Close()
	stream, _ := io.ReadAll(peer)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(bytes.NewReader(stream))
	if err := SkipToMarker(br, id); err != nil {
		t.Fatal(err)
	}
	hr := archive.NewHashingReader(br)
	io.Copy(io.Discard, hr)
	d := proto.Done{Bytes: w.N(), Digest: w.Sum(), Changed: w.Changed()}
	if err := Verify(hr, d); !errors.Is(err, ErrChanged) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Verify after an in-place change: %v", err)
	}
}
