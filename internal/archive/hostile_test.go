package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type hostileCase struct {
	name    string
	src     SourceInfo
	dest    string // relative to out/; "" is out itself
	setup   tree   // inside out/
	entries []entry
	wantErr string
	want    tree // out/ afterwards
}

// hostileCases returns streams a malicious sender could send. outside is
// an absolute directory next to out/ holding a "passwd" file that must
// survive every case.
func hostileCases(outside string) []hostileCase {
	dirSrc := SourceInfo{Base: "d", IsDir: true}
	fileSrc := SourceInfo{Base: "f"}
	contents := SourceInfo{IsDir: true, ContentsOnly: true}
	return []hostileCase{
		{name: "dotdot", src: dirSrc, entries: []entry{dir("d/"), file("../x", "pwn")},
			wantErr: `"../x"`, want: tree{"d/": ""}},
		{name: "dotdot file source", src: SourceInfo{Base: "x"}, dest: "new", entries: []entry{file("../x", "pwn")},
			wantErr: `"../x"`, want: tree{}},
		{name: "absolute", src: dirSrc, entries: []entry{dir("d/"), file("/abs", "pwn")},
			wantErr: `"/abs": absolute`, want: tree{"d/": ""}},
		{name: "absolute contents", src: contents, entries: []entry{file("/abs", "pwn")},
			wantErr: `"/abs": absolute`, want: tree{}},
		{name: "climb out", src: SourceInfo{Base: "a", IsDir: true}, entries: []entry{dir("a/"), file("a/../../x", "pwn")},
			wantErr: `"a/../../x"`, want: tree{"a/": ""}},
		{name: "dotdot that stays inside", src: dirSrc, entries: []entry{dir("d/"), file("d/x/../y", "pwn")},
			wantErr: `"d/x/../y"`, want: tree{"d/": ""}},
		{name: "sibling of top", src: SourceInfo{Base: "dir", IsDir: true}, entries: []entry{dir("dir/"), file("other", "pwn")},
			wantErr: `"other" is outside`, want: tree{"dir/": ""}},
		{name: "prefix of top", src: SourceInfo{Base: "dir", IsDir: true}, entries: []entry{dir("dir/"), file("dirx/f", "pwn")},
			wantErr: `"dirx/f" is outside`, want: tree{"dir/": ""}},
		{name: "sibling of file", src: fileSrc, entries: []entry{file("f", "ok"), file("g", "pwn")},
			wantErr: `"g" is outside`, want: tree{"f": "ok"}},
		{name: "child of file", src: fileSrc, entries: []entry{file("f/x", "pwn")},
			wantErr: `"f/x" is outside`, want: tree{}},
		{name: "second file", src: fileSrc, entries: []entry{file("f", "ok"), file("f", "pwn")},
			wantErr: "after the single file", want: tree{"f": "ok"}},
		{name: "file source sends dir", src: fileSrc, entries: []entry{dir("f/")},
			wantErr: "does not match", want: tree{}},
		{name: "dir source sends file", src: dirSrc, entries: []entry{file("d", "pwn")},
			wantErr: "does not match", want: tree{}},
		{name: "write through in-root symlink", src: dirSrc,
			entries: []entry{dir("d/"), symlink("d/up", ".."), file("d/up/x", "pwn")},
			wantErr: `"d/up/x" would be written through symlink "d/up"`, want: tree{"d/": "", "d/up": "@.."}},
		{name: "write through absolute symlink", src: dirSrc,
			entries: []entry{dir("d/"), symlink("d/evil", outside), file("d/evil/passwd", "pwn")},
			wantErr: "through symlink", want: tree{"d/": "", "d/evil": "@" + outside}},
		{name: "write through /etc symlink", src: dirSrc,
			entries: []entry{dir("d/"), symlink("d/evil", "/etc"), file("d/evil/passwd", "pwn")},
			wantErr: "through symlink", want: tree{"d/": "", "d/evil": "@/etc"}},
		{name: "write through relative escape", src: dirSrc,
			entries: []entry{dir("d/"), symlink("d/evil", "../../.."), file("d/evil/passwd", "pwn")},
			wantErr: "through symlink", want: tree{"d/": "", "d/evil": "@../../.."}},
		{name: "mkdir through symlink", src: dirSrc,
			entries: []entry{dir("d/"), symlink("d/evil", "../../outside"), dir("d/evil/sub/")},
			wantErr: "through symlink", want: tree{"d/": "", "d/evil": "@../../outside"}},
		{name: "contents: write through /etc symlink", src: contents,
			entries: []entry{symlink("evil", "/etc"), file("evil/passwd", "pwn")},
			wantErr: "through symlink", want: tree{"evil": "@/etc"}},
		{name: "contents to new dest: relative escape", src: contents, dest: "new",
			entries: []entry{symlink("evil", "../../outside"), file("evil/passwd", "pwn")},
			wantErr: "through symlink", want: tree{"new/": "", "new/evil": "@../../outside"}},
		{name: "file source onto symlinked top", src: SourceInfo{Base: "evil"},
			setup:   tree{"evil": "@" + outside + "/passwd"},
			entries: []entry{file("evil", "replaced")},
			// Replacing the link itself is fine; its target is untouched.
			want: tree{"evil": "replaced"}},
		{name: "existing symlink in destination", src: dirSrc,
			setup:   tree{"d/evil": "@" + outside},
			entries: []entry{dir("d/"), file("d/evil/passwd", "pwn")},
			wantErr: "through symlink", want: tree{"d/": "", "d/evil": "@" + outside}},
		{name: "existing symlink as top", src: dirSrc,
			setup:   tree{"d": "@" + outside},
			entries: []entry{dir("d/"), file("d/passwd", "pwn")},
			wantErr: "cannot overwrite non-directory", want: tree{"d": "@" + outside}},
		{name: "existing symlink as top, no dir entry", src: dirSrc,
			setup:   tree{"d": "@" + outside},
			entries: []entry{file("d/passwd", "pwn")},
			wantErr: "through symlink", want: tree{"d": "@" + outside}},
		{name: "symlink replaces dir", src: dirSrc,
			entries: []entry{dir("d/"), dir("d/sub/"), symlink("d/sub", "/etc"), file("d/sub/passwd", "pwn")},
			wantErr: "cannot overwrite directory", want: tree{"d/": "", "d/sub/": ""}},
		{name: "hard link", src: dirSrc,
			entries: []entry{dir("d/"), {name: "d/h", typ: tar.TypeLink, link: "../outside/passwd"}},
			wantErr: "unsupported type", want: tree{"d/": ""}},
		{name: "device", src: dirSrc,
			entries: []entry{dir("d/"), {name: "d/sda", typ: tar.TypeBlock}},
			wantErr: "unsupported type", want: tree{"d/": ""}},
		{name: "missing parent entries are created", src: dirSrc,
			entries: []entry{file("d/a/b/c", "C")},
			want:    tree{"d/": "", "d/a/": "", "d/a/b/": "", "d/a/b/c": "C"}},
		{name: "bad base dotdot", src: SourceInfo{Base: ".."}, entries: []entry{file("..", "x")},
			wantErr: "invalid source name", want: tree{}},
		{name: "bad base nested", src: SourceInfo{Base: "a/b"}, entries: []entry{file("a/b", "x")},
			wantErr: "invalid source name", want: tree{}},
		{name: "bad base empty", src: SourceInfo{IsDir: true}, entries: []entry{dir("x/")},
			wantErr: "invalid source name", want: tree{}},
		{name: "contents of a file", src: SourceInfo{ContentsOnly: true}, entries: []entry{file("x", "x")},
			wantErr: "must be a directory", want: tree{}},
		{name: "empty stream", src: fileSrc, wantErr: `ended before "f"`, want: tree{}},
		{name: "truncated file keeps old", src: fileSrc, dest: "f", setup: tree{"f": "old"},
			entries: []entry{{name: "f", typ: tar.TypeReg, body: "partial", size: 4096}},
			wantErr: "unexpected EOF", want: tree{"f": "old"}},
	}
}

func TestUnpackRefusesHostileStreams(t *testing.T) {
	etcPasswd, _ := os.ReadFile("/etc/passwd")
	for _, tc := range hostileCases("OUTSIDE") {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			outside := filepath.Join(tmp, "outside")
			writeTree(t, outside, tree{"passwd": "original"})
			// Rebuild the case with the real absolute path of outside/.
			tc := hostileCases(outside)[indexOf(t, tc.name)]
			out := filepath.Join(tmp, "out")
			if err := os.Mkdir(out, 0o755); err != nil {
				t.Fatal(err)
			}
			writeTree(t, out, tc.setup)

			stream := tarOf(t, tc.entries...)
			_, err := Unpack(context.Background(), bytes.NewReader(stream), filepath.Join(out, tc.dest), tc.src, UnpackOptions{Chown: true})
			checkErr(t, err, tc.wantErr)
			sameTree(t, out, tc.want)
			// Everything refused because of what the sender sent, rather than
			// because of a clash with the destination or a short stream,
			// is marked as unsafe.
			clash := strings.Contains(tc.wantErr, "cannot overwrite") ||
				strings.Contains(tc.wantErr, "EOF") || strings.Contains(tc.wantErr, "ended before")
			if err != nil && !clash && !errors.Is(err, ErrUnsafeEntry) {
				t.Errorf("error %v does not wrap ErrUnsafeEntry", err)
			}
			sameTree(t, tmp, merge(tree{"outside/": "", "outside/passwd": "original", "out/": ""}, prefixed("out", readTree(t, out))))
			if now, _ := os.ReadFile("/etc/passwd"); !bytes.Equal(now, etcPasswd) {
				t.Fatal("/etc/passwd changed!")
			}
		})
	}
}

func indexOf(t *testing.T, name string) int {
	for i, c := range hostileCases("") {
		if c.name == name {
			return i
		}
	}
	t.Fatalf("no case %q", name)
	return -1
}

func prefixed(dir string, spec tree) tree {
	out := tree{}
	for k, v := range spec {
		out[dir+"/"+k] = v
	}
	return out
}

// TestRootBackstop pins down the os.Root behaviour Unpack relies on as its
// last line of defence, independent of its own symlink checks.
func TestRootBackstop(t *testing.T) {
	tmp := t.TempDir()
	outside := filepath.Join(tmp, "outside")
	writeTree(t, tmp, tree{"outside/passwd": "original", "out/in/": ""})
	root, err := os.OpenRoot(filepath.Join(tmp, "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for target, name := range map[string]string{
		outside:       "abs",
		"/etc":        "etc",
		"../outside":  "rel",
		"in/../../..": "deep",
		"/":           "slash",
	} {
		if err := root.Symlink(target, name); err != nil {
			t.Fatal(err)
		}
		for _, op := range []func() error{
			func() error { _, err := root.Create(name + "/passwd"); return err },
			func() error { return root.Mkdir(name+"/sub", 0o755) },
			func() error { return root.Rename("in", name+"/in") },
			func() error { return root.Chmod(name, 0o777) },
		} {
			if err := op(); err == nil {
				t.Errorf("os.Root followed %s -> %s", name, target)
			}
		}
	}
	if _, err := root.Create("../x"); err == nil {
		t.Error("os.Root allowed ../x")
	}
	sameTree(t, outside, tree{"passwd": "original"})
}

// TestUnpackRefusesSparse: a GNU sparse entry could expand a few bytes on
// the wire into gigabytes of zeros on disk.
func TestUnpackRefusesSparse(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// tar.Writer will not write GNU.sparse records, so write look-alikes of
	// the same length and patch them: PAX record data is not checksummed.
	hdr := &tar.Header{Name: "f", Typeflag: tar.TypeReg, Size: 5, Mode: 0o644, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"GNU.sparsX.map": "0,5", "GNU.sparsX.numblocks": "1", "GNU.sparsX.size": "1000000000"}}
	if err := tw.WriteHeader(hdr); err != nil {
		t.Fatal(err)
	}
	io.WriteString(tw, "hello")
	tw.Close()
	stream := bytes.ReplaceAll(buf.Bytes(), []byte("GNU.sparsX."), []byte("GNU.sparse."))

	// Make sure the patch worked: archive/tar now sees a 1 GB file.
	got, err := tar.NewReader(bytes.NewReader(stream)).Next()
	if err != nil || got.Size != 1000000000 {
		t.Fatalf("crafted sparse header: %+v, %v", got, err)
	}
	out := t.TempDir()
	_, err = Unpack(context.Background(), bytes.NewReader(stream), out, SourceInfo{Base: "f"}, UnpackOptions{})
	if !errors.Is(err, ErrUnsafeEntry) || !strings.Contains(err.Error(), "sparse") {
		t.Fatalf("got %v, want a sparse refusal", err)
	}
	sameTree(t, out, tree{})
}
