package archive

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var srcTree = tree{
	"f":         "hello",
	"flink":     "@f",
	"d/a":       "A",
	"d/sub/b":   "B",
	"d/link":    "@a",
	"d/empty/":  "",
	"dlink":     "@d",
	"dangling":  "@nowhere",
	"absolute":  "@/etc/hostname",
	"other/x":   "X",
	"other/y/":  "",
	"dlink2":    "@other",
	"d2/.hid":   "H",
	"d2/deep/z": "Z",
}

var dContents = tree{"a": "A", "sub/": "", "sub/b": "B", "link": "@a", "empty/": ""}

// under prefixes every name in spec with dir/.
func under(dir string, spec tree) tree {
	out := tree{dir + "/": ""}
	for k, v := range spec {
		out[dir+"/"+k] = v
	}
	return out
}

func merge(ts ...tree) tree {
	out := tree{}
	for _, t := range ts {
		for k, v := range t {
			out[k] = v
		}
	}
	return out
}

func TestStat(t *testing.T) {
	tmp := t.TempDir()
	writeTree(t, tmp, srcTree)
	for _, tc := range []struct {
		src     string
		want    SourceInfo
		wantErr string
	}{
		{src: "f", want: SourceInfo{Base: "f"}},
		{src: "d", want: SourceInfo{Base: "d", IsDir: true}},
		{src: "d/", want: SourceInfo{Base: "d", IsDir: true}},
		{src: "d/.", want: SourceInfo{Base: "d", IsDir: true, ContentsOnly: true}},
		{src: "d/./", want: SourceInfo{Base: "d", IsDir: true, ContentsOnly: true}},
		{src: "flink", want: SourceInfo{Base: "flink"}},
		{src: "dlink", want: SourceInfo{Base: "dlink"}}, // the link itself
		{src: "dlink/", want: SourceInfo{Base: "dlink", IsDir: true}},
		{src: "dlink/.", want: SourceInfo{Base: "dlink", IsDir: true, ContentsOnly: true}},
		{src: "dangling", want: SourceInfo{Base: "dangling"}},
		{src: "d/sub/..", want: SourceInfo{Base: "d", IsDir: true}},
		{src: "missing", wantErr: "does not exist"},
		{src: "f/.", wantErr: "not a directory"},
		{src: "f/", wantErr: "not a directory"},
	} {
		t.Run(tc.src, func(t *testing.T) {
			p := filepath.Join(tmp, tc.src) + suffix(tc.src)
			got, err := Stat(p)
			checkErr(t, err, tc.wantErr)
			if err == nil && got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			// The receiver's view from the path alone agrees with the sender's.
			if d, derr := Describe(p, got.IsDir); err == nil && (derr != nil || d != got) {
				t.Errorf("Describe = %+v, %v; Stat = %+v", d, derr, got)
			}
		})
	}
	t.Run("root", func(t *testing.T) {
		if _, err := Stat("/"); err == nil || !strings.Contains(err.Error(), "root directory") {
			t.Errorf("Stat(/) = %v, want a root directory error", err)
		}
		if info, err := Stat("/."); err != nil || !info.ContentsOnly {
			t.Errorf("Stat(/.) = %+v, %v", info, err)
		}
		if _, err := Describe("/", true); err == nil || !strings.Contains(err.Error(), "root directory") {
			t.Errorf("Describe(/) = %v, want a root directory error", err)
		}
		if info, err := Describe("etc/.", true); err != nil || info != (SourceInfo{Base: "etc", IsDir: true, ContentsOnly: true}) {
			t.Errorf("Describe(etc/.) = %+v, %v", info, err)
		}
		if _, err := Describe("/etc/.", false); err == nil {
			t.Error("Describe accepted contents-only of a file")
		}
	})
}

// suffix restores what filepath.Join cleans away: the trailing "/" or "/."
// that carries meaning for docker cp.
func suffix(p string) string {
	switch {
	case strings.HasSuffix(p, "/./"):
		return "/./"
	case strings.HasSuffix(p, "/."):
		return "/."
	case strings.HasSuffix(p, "/"):
		return "/"
	}
	return ""
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("no error, want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Fatalf("error %q does not contain %q", err, want)
	}
}

// TestDockerCpRules covers docker cp's destination rules. src and dest are
// relative to a temp dir holding src/ (srcTree) and out/ (setup); want is
// the resulting content of out/.
func TestDockerCpRules(t *testing.T) {
	for _, tc := range []struct {
		name      string
		src, dest string
		setup     tree
		want      tree
		wantErr   string
	}{
		// SRC is a file.
		{name: "file to missing dest", src: "f", dest: "new",
			want: tree{"new": "hello"}},
		{name: "file over existing file", src: "f", dest: "g", setup: tree{"g": "old"},
			want: tree{"g": "hello"}},
		{name: "file into existing dir", src: "f", dest: "dd", setup: tree{"dd/": ""},
			want: tree{"dd/": "", "dd/f": "hello"}},
		{name: "file into existing dir with slash", src: "f", dest: "dd/", setup: tree{"dd/": ""},
			want: tree{"dd/": "", "dd/f": "hello"}},
		{name: "file into existing dir over file", src: "f", dest: "dd", setup: tree{"dd/f": "old"},
			want: tree{"dd/": "", "dd/f": "hello"}},
		{name: "file to missing dir with slash", src: "f", dest: "nodir/",
			wantErr: "destination directory", want: tree{}},
		{name: "file with missing parent", src: "f", dest: "nop/x",
			wantErr: `out/nop" does not exist`, want: tree{}},
		{name: "file to file with slash", src: "f", dest: "g/", setup: tree{"g": "old"},
			wantErr: "not a directory", want: tree{"g": "old"}},
		{name: "file over dir in dest", src: "f", dest: "dd", setup: tree{"dd/f/": ""},
			wantErr: "cannot overwrite directory", want: tree{"dd/": "", "dd/f/": ""}},
		{name: "symlink source is copied as link", src: "flink", dest: ".",
			want: tree{"flink": "@f"}},
		{name: "dangling symlink source", src: "dangling", dest: "x",
			want: tree{"x": "@nowhere"}},
		{name: "absolute symlink source", src: "absolute", dest: ".",
			want: tree{"absolute": "@/etc/hostname"}},
		{name: "dir symlink source without slash", src: "dlink", dest: ".",
			want: tree{"dlink": "@d"}},
		{name: "dest symlink to dir", src: "f", dest: "ln", setup: tree{"real/": "", "ln": "@real"},
			want: tree{"real/": "", "real/f": "hello", "ln": "@real"}},
		{name: "dest symlink to file", src: "f", dest: "ln", setup: tree{"real": "old", "ln": "@real"},
			want: tree{"real": "hello", "ln": "@real"}},

		// SRC is a directory.
		{name: "dir to missing dest", src: "d", dest: "new",
			want: under("new", dContents)},
		{name: "dir to existing file", src: "d", dest: "g", setup: tree{"g": "old"},
			wantErr: "cannot copy a directory to a file", want: tree{"g": "old"}},
		{name: "dir into existing dir", src: "d", dest: "dd", setup: tree{"dd/": ""},
			want: merge(tree{"dd/": ""}, under("dd/d", dContents))},
		{name: "dir with slash into existing dir", src: "d/", dest: "dd/", setup: tree{"dd/": ""},
			want: merge(tree{"dd/": ""}, under("dd/d", dContents))},
		{name: "dir merges into existing dir", src: "d", dest: "dd", setup: tree{"dd/d/keep": "K", "dd/d/a": "old"},
			want: merge(tree{"dd/": "", "dd/d/keep": "K"}, under("dd/d", dContents))},
		{name: "dir over file in dest", src: "d", dest: "dd", setup: tree{"dd/d/sub": "file"},
			wantErr: "cannot overwrite non-directory", // Entries before the failing one stay, as with docker cp.
			want:    tree{"dd/": "", "dd/d/": "", "dd/d/a": "A", "dd/d/empty/": "", "dd/d/link": "@a", "dd/d/sub": "file"}},
		{name: "dir over symlink in dest", src: "d", dest: "dd", setup: tree{"dd/d": "@/tmp"},
			wantErr: "cannot overwrite non-directory", want: tree{"dd/": "", "dd/d": "@/tmp"}},
		{name: "dir contents into existing dir", src: "d/.", dest: "dd", setup: tree{"dd/keep": "K"},
			want: merge(tree{"dd/keep": "K"}, under("dd", dContents))},
		{name: "dir contents to missing dest", src: "d/.", dest: "new",
			want: under("new", dContents)},
		{name: "dir contents with hidden files", src: "d2/.", dest: "dd", setup: tree{"dd/": ""},
			want: tree{"dd/": "", "dd/.hid": "H", "dd/deep/": "", "dd/deep/z": "Z"}},
		{name: "dir contents to existing file", src: "d/.", dest: "g", setup: tree{"g": "old"},
			wantErr: "cannot copy a directory to a file", want: tree{"g": "old"}},
		{name: "dir with missing parent", src: "d", dest: "nop/x",
			wantErr: `out/nop" does not exist`, want: tree{}},
		{name: "dir contents with missing parent", src: "d/.", dest: "nop/x",
			wantErr: `out/nop" does not exist`, want: tree{}},
		{name: "dir to missing dest with slash", src: "d", dest: "new/",
			want: under("new", dContents)},
		{name: "dir symlink source with slash is followed", src: "dlink2/", dest: ".",
			want: tree{"dlink2/": "", "dlink2/x": "X", "dlink2/y/": ""}},
		{name: "dir symlink source with /. is followed", src: "dlink2/.", dest: ".",
			want: tree{"x": "X", "y/": ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			writeTree(t, filepath.Join(tmp, "src"), srcTree)
			out := filepath.Join(tmp, "out")
			if err := os.Mkdir(out, 0o755); err != nil {
				t.Fatal(err)
			}
			writeTree(t, out, tc.setup)
			src := filepath.Join(tmp, "src", tc.src) + suffix(tc.src)
			dest := filepath.Join(out, tc.dest) + suffix(tc.dest)
			res, err := cp(context.Background(), src, dest, UnpackOptions{})
			checkErr(t, err, tc.wantErr)
			sameTree(t, out, tc.want)
			if err == nil && res.Entries == 0 {
				t.Errorf("result %+v: no entries", res)
			}
		})
	}
}
