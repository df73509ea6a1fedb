package archive

import (
	"bytes"
	"context"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
func FuzzUnpack(f *testing.F) {
	for _, tc := range hostileCases("/tmp") {
		f.Add(tarOf(f, tc.entries...), uint8(0))
	}
	f.Add(tarOf(f, dir("x/"), file("x/a", "A"), symlink("x/l", "a"), dir("x/s/"), file("x/s/b", "B")), uint8(0))
	f.Add(tarOf(f, file("x", "hello")), uint8(1))
	f.Add(tarOf(f, file("a", "A"), symlink("abs/", "x"), file("rel/p", "x")), uint8(2))
	f.Add(tarOf(f, dir("x/"), file("x/abs/passwd", "x"), file("x/rel/passwd", "x")), uint8(3))

	f.Fuzz(func(t *testing.T, data []byte, mode uint8) {
		tm := time.AfterFunc(3*time.Second, func() { os.WriteFile("/tmp/hang.bin", append([]byte{mode}, data...), 0o644); panic("hang") })
		defer tm.Stop()
		tmp := t.TempDir()
		outside := filepath.Join(tmp, "outside")
		out := filepath.Join(tmp, "out")
		writeTree(t, tmp, tree{
			"outside/passwd": "original",
			"out/abs":        "@" + outside,
			"out/rel":        "@../outside",
			"out/x/abs":      "@" + outside,
			"out/x/rel":      "@../../outside",
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
		Unpack(context.Background(), bytes.NewReader(data), dest, src, UnpackOptions{Chown: mode&4 != 0})

		entries, err := os.ReadDir(tmp)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 2 {
			t.Fatalf("%d entries next to out/, want 2", len(entries))
		}
		got := readTree(t, outside)
		if len(got) != 1 || got["passwd"] != "original" {
			t.Fatalf("outside/ changed: %q", got)
		}
		for name := range readTree(t, out) {
			if strings.Contains(name, ".mvmcp-") {
				t.Fatalf("temporary file %s left behind", name)
			}
		}
	})
}
