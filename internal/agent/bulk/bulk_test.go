package bulk

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
