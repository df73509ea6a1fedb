package cpio

import (
	"bytes"
	"io"
	"testing"

	ref "github.com/cavaliergopher/cpio"
)

// The archive is read back with an independent cpio implementation.
func TestRoundTripWithReferenceReader(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, 1700000000)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.Dir("dev", 0o755))
	must(w.CharDev("dev/console", 0o600, 5, 1))
	must(w.File("init", 0o755, []byte("#!/bin/sh\necho hi\n")))
	must(w.File("etc/odd", 0o644, []byte("x"))) // 1 byte: exercises padding
	must(w.Symlink("bin/sh", "busybox"))
	must(w.Close())
	if buf.Len()%4 != 0 {
		t.Fatalf("archive length %d not 4-aligned", buf.Len())
	}
	r := ref.NewReader(&buf)
	type got struct {
		mode  ref.FileMode
		body  string
		link  string
		mtime int64
	}
	seen := map[string]got{}
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(r)
		seen[h.Name] = got{mode: h.Mode, body: string(body), link: h.Linkname, mtime: h.ModTime.Unix()}
	}
	if g := seen["init"]; g.body != "#!/bin/sh\necho hi\n" || g.mode.Perm() != 0o755 || !g.mode.IsRegular() || g.mtime != 1700000000 {
		t.Errorf("init: %+v", g)
	}
	if g := seen["etc/odd"]; g.body != "x" {
		t.Errorf("odd: %+v", g)
	}
	if g := seen["dev/console"]; g.mode&ref.TypeChar == 0 {
		t.Errorf("console: %+v", g)
	}
	if g := seen["bin/sh"]; g.link != "busybox" && g.body != "busybox" {
		t.Errorf("symlink: %+v", g)
	}
	if len(seen) != 5 {
		t.Errorf("entries: %v", seen)
	}
}

func TestRejectsBadNames(t *testing.T) {
	w := NewWriter(io.Discard, 0)
	if err := w.File("", 0o644, nil); err == nil {
		t.Fatal("empty name accepted")
	}
	if err := w.File("a\x00b", 0o644, nil); err == nil {
		t.Fatal("NUL accepted")
	}
}
