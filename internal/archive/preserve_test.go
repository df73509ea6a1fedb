package archive

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestPreservesMetadata compares os.Lstat of source and copy: mode bits
// (setuid/setgid/sticky included), nanosecond mtimes of files and
// directories (a read-only directory too, whose mode must go on after its
// contents), symlink targets verbatim, and ownership with and without Chown.
func TestPreservesMetadata(t *testing.T) {
	type node struct {
		name string
		mode fs.FileMode // type bits select dir/symlink
		link string
	}
	nodes := []node{
		{name: "d", mode: fs.ModeDir | 0o750},
		{name: "d/plain", mode: 0o640},
		{name: "d/exec", mode: 0o755},
		{name: "d/suid", mode: fs.ModeSetuid | 0o755},
		{name: "d/sgid", mode: fs.ModeSetgid | 0o750},
		{name: "d/none", mode: 0},
		{name: "d/sticky", mode: fs.ModeDir | fs.ModeSticky | 0o777},
		{name: "d/sgiddir", mode: fs.ModeDir | fs.ModeSetgid | 0o775},
		{name: "d/ro", mode: fs.ModeDir | 0o555},
		{name: "d/ro/f", mode: 0o444},
		{name: "d/ro/inner", mode: fs.ModeDir | 0o500},
		{name: "d/rel", mode: fs.ModeSymlink, link: "plain"},
		{name: "d/abs", mode: fs.ModeSymlink, link: "/etc/passwd"},
		{name: "d/up", mode: fs.ModeSymlink, link: "../../.."},
		{name: "d/dangling", mode: fs.ModeSymlink, link: "no/such/file"},
	}
	for _, chown := range []bool{false, true} {
		t.Run(map[bool]string{false: "caller owns", true: "chown"}[chown], func(t *testing.T) {
			root := os.Geteuid() == 0
			if chown && !root {
				t.Skip("chown needs root")
			}
			tmp := t.TempDir()
			src := filepath.Join(tmp, "src")
			for _, n := range nodes {
				p := filepath.Join(src, n.name)
				var err error
				switch n.mode.Type() {
				case fs.ModeDir:
					err = os.MkdirAll(p, 0o700)
				case fs.ModeSymlink:
					err = os.Symlink(n.link, p)
				default:
					err = os.WriteFile(p, []byte("data of "+n.name), 0o600)
				}
				if err != nil {
					t.Fatal(err)
				}
				if root {
					// Foreign ids, so "caller owns" is visible too.
					if err := os.Lchown(p, 1234, 5678); err != nil {
						t.Fatal(err)
					}
				}
			}
			// Modes and times last, deepest first, so nothing disturbs them.
			base := time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)
			for i := len(nodes) - 1; i >= 0; i-- {
				n := nodes[i]
				p := filepath.Join(src, n.name)
				if n.mode.Type() == fs.ModeSymlink {
					continue
				}
				if err := os.Chmod(p, n.mode); err != nil {
					t.Fatal(err)
				}
				mtime := base.Add(time.Duration(i)*time.Hour + time.Duration(i*1000+123)*time.Nanosecond)
				if err := os.Chtimes(p, mtime, mtime); err != nil {
					t.Fatal(err)
				}
			}
			out := filepath.Join(tmp, "out")
			if err := os.Mkdir(out, 0o755); err != nil {
				t.Fatal(err)
			}
			res, err := cp(context.Background(), filepath.Join(src, "d"), out, UnpackOptions{Chown: chown})
			if err != nil {
				t.Fatal(err)
			}
			if res.Entries != len(nodes) {
				t.Errorf("Entries = %d, want %d", res.Entries, len(nodes))
			}
			for _, n := range nodes {
				want, err := os.Lstat(filepath.Join(src, n.name))
				if err != nil {
					t.Fatal(err)
				}
				got, err := os.Lstat(filepath.Join(out, n.name))
				if err != nil {
					t.Errorf("%s: %v", n.name, err)
					continue
				}
				wantMode := want.Mode()
				if !chown {
					wantMode &^= fs.ModeSetuid | fs.ModeSetgid // never handed to the receiver's own files
				}
				if got.Mode() != wantMode {
					t.Errorf("%s: mode %v, want %v", n.name, got.Mode(), wantMode)
				}
				if got.Size() != want.Size() && n.mode.IsRegular() {
					t.Errorf("%s: size %d, want %d", n.name, got.Size(), want.Size())
				}
				// Symlink mtimes are not restored (os.Root has no lutimes).
				if n.mode.Type() != fs.ModeSymlink && !got.ModTime().Equal(want.ModTime()) {
					t.Errorf("%s: mtime %v, want %v", n.name, got.ModTime(), want.ModTime())
				}
				if n.mode.Type() == fs.ModeSymlink {
					if l, _ := os.Readlink(filepath.Join(out, n.name)); l != n.link {
						t.Errorf("%s: link %q, want %q", n.name, l, n.link)
					}
				}
				st := got.Sys().(*syscall.Stat_t)
				wantUID, wantGID := uint32(os.Getuid()), uint32(os.Getgid())
				if chown {
					wantUID, wantGID = 1234, 5678
				}
				if st.Uid != wantUID || st.Gid != wantGID {
					t.Errorf("%s: owner %d:%d, want %d:%d", n.name, st.Uid, st.Gid, wantUID, wantGID)
				}
			}
		})
	}
}

// TestPackSkipsSpecialFiles checks FIFOs and sockets are left out and
// reported, and hard links arrive as independent files.
func TestPackSkipsSpecialFiles(t *testing.T) {
	tmp := t.TempDir()
	writeTree(t, tmp, tree{"d/f": "F"})
	if err := syscall.Mkfifo(filepath.Join(tmp, "d/fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(tmp, "d/f"), filepath.Join(tmp, "d/hard")); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	info, res, err := Pack(context.Background(), &buf, filepath.Join(tmp, "d"))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Skipped) != 1 || res.Skipped[0] != "d/fifo" {
		t.Errorf("Skipped = %q, want [d/fifo]", res.Skipped)
	}
	out := filepath.Join(tmp, "out")
	if _, err := Unpack(context.Background(), &buf, out, info, UnpackOptions{}); err != nil {
		t.Fatal(err)
	}
	sameTree(t, out, tree{"f": "F", "hard": "F"})
	a, _ := os.Stat(filepath.Join(out, "f"))
	b, _ := os.Stat(filepath.Join(out, "hard"))
	if os.SameFile(a, b) {
		t.Error("hard link survived; want separate files")
	}
	if _, err := Stat(filepath.Join(tmp, "d/fifo")); err == nil {
		t.Error("Stat of a FIFO source succeeded")
	}
}
