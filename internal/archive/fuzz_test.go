package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func FuzzCleanEntryName(f *testing.F) {
	for _, s := range []string{"a", "a/b/", "./a", "a//b", "../x", "/abs", "a/../../x", "a/../b", ".", "..", "", "a\x00b", "a/./b/.", `a\..\b`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		clean, err := cleanEntryName(name)
		hasDotDot := strings.Contains("/"+name+"/", "/../")
		if err != nil {
			return
		}
		switch {
		case hasDotDot:
			t.Fatalf("%q accepted despite a .. element", name)
		case strings.HasPrefix(clean, "/"), clean == ".", clean == "", strings.ContainsRune(clean, 0):
			t.Fatalf("%q -> %q", name, clean)
		case path.Clean(clean) != clean:
			t.Fatalf("%q -> %q is not clean", name, clean)
		case !filepath.IsLocal(filepath.FromSlash(clean)):
			t.Fatalf("%q -> %q is not local", name, clean)
		}
		if again, err := cleanEntryName(clean); err != nil || again != clean {
			t.Fatalf("not idempotent: %q -> %q -> %q, %v", name, clean, again, err)
		}
	})
}

// FuzzUnpack feeds arbitrary bytes to Unpack as a tar stream, under every
// destination rule, into a tree that already holds symlinks pointing out.
// Whatever happens, nothing outside out/ may change and nothing may panic.
//
// An execution touches the file system a dozen times, so the default 60 s
// minimization of every new input eats short runs; use e.g.
//
//	TMPDIR=/dev/shm go test -run '^$' -fuzz FuzzUnpack -fuzztime 20s -fuzzminimizetime 200x ./internal/archive/
func FuzzUnpack(f *testing.F) {
	for _, tc := range hostileCases("/tmp") {
		f.Add(tarOf(f, tc.entries...), uint8(0))
	}
	f.Add(tarOf(f, dir("x/"), file("x/a", "A"), symlink("x/l", "a"), dir("x/s/"), file("x/s/b", "B")), uint8(0))
	f.Add(tarOf(f, file("x", "hello")), uint8(1))
	f.Add(tarOf(f, file("a", "A"), symlink("abs/", "x"), file("rel/p", "x")), uint8(2))
	f.Add(tarOf(f, dir("x/"), file("x/abs/passwd", "x"), file("x/rel/passwd", "x")), uint8(3))
	check := escapeChecker(f)
	f.Fuzz(func(t *testing.T, data []byte, mode uint8) {
		check(t, data, mode)
	})
}

// FuzzUnpackScript is FuzzUnpack with the tar framing done for the fuzzer:
// random bytes rarely get past tar's header checksums, so here the input is
// a script of entries, one a line: "d name", "f name content" or
// "l name target".
func FuzzUnpackScript(f *testing.F) {
	f.Add("d x\nl x/up ..\nf x/up/pwn a", uint8(0))
	f.Add("l evil ../outside\nf evil/passwd root", uint8(2))
	f.Add("d x/\nl x/e ../../outside\nd x/e/sub\nf x/e/sub/f z", uint8(3))
	f.Add("f x/abs/passwd a\nf x/rel/passwd b", uint8(0))
	f.Add("f x hi", uint8(1))
	check := escapeChecker(f)
	f.Fuzz(func(t *testing.T, script string, mode uint8) {
		var entries []entry
		for line := range strings.Lines(script) {
			typ, rest, _ := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
			name, arg, _ := strings.Cut(rest, " ")
			switch typ {
			case "d":
				entries = append(entries, dir(name))
			case "f":
				entries = append(entries, file(name, arg))
			case "l":
				entries = append(entries, symlink(name, arg))
			}
		}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, e := range entries {
			hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Size: int64(len(e.body)), Mode: 0o755}
			if e.typ != tar.TypeReg {
				hdr.Size = 0
			}
			if tw.WriteHeader(hdr) != nil {
				return // a name tar cannot encode
			}
			io.WriteString(tw, e.body)
		}
		tw.Close()
		check(t, buf.Bytes(), mode)
	})
}

// escapeChecker returns a function that unpacks a stream into a fresh out/
// next to a shared outside/ (which must never change) and fails if anything
// outside out/ changed or a temporary file was left behind.
func escapeChecker(f *testing.F) func(t *testing.T, stream []byte, mode uint8) {
	base := f.TempDir()
	outside := filepath.Join(base, "outside")
	writeTree(f, base, tree{"outside/passwd": "original"})
	// Mode, mtime and owner catch a chmod, chtimes or chown that followed a
	// link out.
	stamp := func(tb testing.TB) (s string) {
		for _, p := range []string{outside, filepath.Join(outside, "passwd")} {
			fi, err := os.Lstat(p)
			if err != nil {
				tb.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			s += fmt.Sprint(fi.Mode(), fi.ModTime().UnixNano(), st.Uid, st.Gid, " ")
		}
		return s
	}
	before := stamp(f)

	return func(t *testing.T, stream []byte, mode uint8) {
		out, err := os.MkdirTemp(base, "out")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(out)
		writeTree(t, out, tree{
			"abs":   "@" + outside,
			"rel":   "@../outside",
			"x/abs": "@" + outside,
			"x/rel": "@../../outside",
		})
		var src SourceInfo
		dest := out
		switch mode % 4 {
		case 0:
			src = SourceInfo{Base: "x", IsDir: true}
		case 1:
			src, dest = SourceInfo{Base: "x"}, filepath.Join(out, "new")
		case 2:
			src = SourceInfo{IsDir: true, ContentsOnly: true}
		case 3:
			src, dest = SourceInfo{Base: "x", IsDir: true}, filepath.Join(out, "new")
		}
		Unpack(context.Background(), bytes.NewReader(stream), dest, src, UnpackOptions{Chown: mode&4 != 0})

		entries, err := os.ReadDir(base)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 2 {
			t.Fatalf("%d entries next to out/, want 2", len(entries))
		}
		if got := readTree(t, outside); len(got) != 1 || got["passwd"] != "original" {
			t.Fatalf("outside/ changed: %q", got)
		}
		if after := stamp(t); after != before {
			t.Fatalf("outside/ metadata changed: %s -> %s", before, after)
		}
		for name := range readTree(t, out) {
			if strings.Contains(name, ".mvmcp-") {
				t.Fatalf("temporary file %s left behind", name)
			}
		}
	}
}
