package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A tree spec maps slash-separated names to contents: a name ending in "/"
// is a directory, a value starting with "@" is a symlink to the rest, and
// anything else is a regular file with that content.
type tree map[string]string

func writeTree(t testing.TB, dir string, spec tree) {
	t.Helper()
	for name, val := range spec {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		if target, ok := strings.CutPrefix(val, "@"); ok {
			err = os.Symlink(target, p)
		} else {
			err = os.WriteFile(p, []byte(val), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// readTree returns the spec of everything below dir, never following links.
func readTree(t testing.TB, dir string) tree {
	t.Helper()
	got := tree{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		name := filepath.ToSlash(rel)
		switch d.Type() {
		case fs.ModeDir:
			got[name+"/"] = ""
		case fs.ModeSymlink:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			got[name] = "@" + target
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			got[name] = string(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func sameTree(t *testing.T, dir string, want tree) {
	t.Helper()
	got := readTree(t, dir)
	for name, w := range want {
		if g, ok := got[name]; !ok {
			t.Errorf("%s: missing (want %q)", name, w)
		} else if g != w {
			t.Errorf("%s: got %q, want %q", name, g, w)
		}
	}
	for name, g := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s: unexpected (%q)", name, g)
		}
	}
}

// cp copies src to dest the way the agent will: Stat, then Pack on one end
// of a pipe and Unpack on the other.
func cp(ctx context.Context, src, dest string, opts UnpackOptions) (Result, error) {
	info, err := Stat(src)
	if err != nil {
		return Result{}, err
	}
	pr, pw := io.Pipe()
	packErr := make(chan error, 1)
	go func() {
		_, _, err := Pack(ctx, pw, src)
		pw.CloseWithError(err)
		packErr <- err
	}()
	res, err := Unpack(ctx, pr, dest, info, opts)
	pr.CloseWithError(errors.New("receiver done")) // unblock a sender we stopped reading from
	if perr := <-packErr; err == nil {
		err = perr
	}
	return res, err
}

// entry is one hand-crafted tar entry.
type entry struct {
	name string
	typ  byte
	body string
	link string
	size int64 // overrides len(body) when > 0, to fake truncation
}

func file(name, body string) entry { return entry{name: name, typ: tar.TypeReg, body: body} }
func dir(name string) entry        { return entry{name: name, typ: tar.TypeDir} }
func symlink(name, target string) entry {
	return entry{name: name, typ: tar.TypeSymlink, link: target}
}

// tarOf builds a stream from entries; a truncated entry (size > len(body))
// ends the stream right after its partial body.
func tarOf(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		size := int64(len(e.body))
		if e.size > 0 {
			size = e.size
		}
		if e.typ != tar.TypeReg {
			size = 0
		}
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Size: size, Mode: 0o644, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
		if size > int64(len(e.body)) {
			return buf.Bytes() // no Flush: it would fail on the missing bytes
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
