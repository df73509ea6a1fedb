package integration

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCp copies files and trees both ways through mvmctl, with docker cp's rules, and
// checks what arrived: contents (a 256 MiB file by checksum), modes, mtimes, symlinks;
// and that escapes and missing parents are refused.
func TestCp(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.must("up", "-d", "--name", "c", "--network", "none", "--memory", "1G")
	host := t.TempDir()

	// A tree with a file, an executable, a nested directory and links.
	tree := filepath.Join(host, "tree")
	os.MkdirAll(filepath.Join(tree, "sub", "deep"), 0o755)
	os.WriteFile(filepath.Join(tree, "plain.txt"), []byte("plain\n"), 0o644)
	os.WriteFile(filepath.Join(tree, "run.sh"), []byte("#!/bin/sh\necho ran\n"), 0o755)
	os.WriteFile(filepath.Join(tree, "sub", "deep", "secret"), []byte("s"), 0o600)
	os.Symlink("../plain.txt", filepath.Join(tree, "sub", "rel"))
	os.Symlink("/etc/hostname", filepath.Join(tree, "sub", "abs"))
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	os.Chtimes(filepath.Join(tree, "plain.txt"), old, old)

	e.must("cp", tree, "c:/srv")
	checks := map[string]string{
		"stat -c '%a %s' /srv/plain.txt":        "644 6",
		"stat -c '%a' /srv/run.sh":              "755",
		"stat -c '%a' /srv/sub/deep/secret":     "600",
		"readlink /srv/sub/rel":                 "../plain.txt",
		"readlink /srv/sub/abs":                 "/etc/hostname",
		"date -u -r /srv/plain.txt +%Y%m%d%H%M": "202001020304",
		"/srv/run.sh":                           "ran",
		"cat /srv/sub/rel":                      "plain",
	}
	for cmd, want := range checks {
		if got := strings.TrimSpace(e.mustExec("c", "sh", "-c", cmd)); got != want {
			t.Errorf("%s: %q, want %q", cmd, got, want)
		}
	}
	// Into an existing directory the source keeps its name; /. copies contents only.
	e.must("cp", tree, "c:/srv")
	if got := e.mustExec("c", "ls", "/srv"); !strings.Contains(got, "tree") {
		t.Errorf("copy into an existing dir: %q", got)
	}
	e.must("cp", filepath.Join(host, "tree", "sub")+"/.", "c:/tmp/flat")
	if got := e.mustExec("c", "ls", "/tmp/flat"); !strings.Contains(got, "deep") {
		t.Errorf("contents copy: %q", got)
	}
	// And back out again.
	out := filepath.Join(host, "out")
	e.must("cp", "c:/srv", out)
	if b, _ := os.ReadFile(filepath.Join(out, "plain.txt")); string(b) != "plain\n" {
		t.Errorf("copied out: %q", b)
	}
	if l, _ := os.Readlink(filepath.Join(out, "sub", "abs")); l != "/etc/hostname" {
		t.Errorf("absolute link copied as %q", l)
	}
	if st, err := os.Stat(filepath.Join(out, "run.sh")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("mode out: %v %v", st, err)
	}

	// 256 MiB each way, checked by content hash.
	big := filepath.Join(host, "big.bin")
	data := make([]byte, 256<<20)
	rand.Read(data)
	os.WriteFile(big, data, 0o644)
	sum := sha256.Sum256(data)
	start := time.Now()
	e.must("cp", big, "c:/tmp/big.bin")
	t.Logf("256 MiB in: %v", time.Since(start))
	if got := e.mustExec("c", "sha256sum", "/tmp/big.bin"); !strings.HasPrefix(got, hex.EncodeToString(sum[:])) {
		t.Fatalf("guest copy differs: %s", got)
	}
	start = time.Now()
	e.must("cp", "c:/tmp/big.bin", filepath.Join(host, "big.back"))
	t.Logf("256 MiB out: %v", time.Since(start))
	back, _ := os.ReadFile(filepath.Join(host, "big.back"))
	if !bytes.Equal(back, data) {
		t.Fatal("host copy differs")
	}
	e.mustExec("c", "rm", "/tmp/big.bin")

	// Refusals: missing source, missing parent, a directory onto a file.
	bad := []struct {
		args []string
		want string
	}{
		{[]string{"cp", "c:/no/such", host}, "does not exist"},
		{[]string{"cp", big, "c:/no/such/dir/x"}, "does not exist"},
		{[]string{"cp", tree, "c:/etc/hostname"}, "cannot copy a directory to a file"},
		{[]string{"cp", big, "/tmp/x"}, "one side must be NAME:PATH"},
		{[]string{"cp", "c:/a", "c:/b"}, "between two VMs"},
	}
	for _, b := range bad {
		if r := e.run(b.args...); r.code == 0 || !strings.Contains(r.stderr, b.want) {
			t.Errorf("%v: exit %d %q, want %q", b.args, r.code, r.stderr, b.want)
		}
	}
	// A guest link pointing out of the copied tree is copied as a link, never followed:
	// nothing lands outside the destination on the host.
	e.mustExec("c", "sh", "-c", "mkdir -p /esc && ln -s / /esc/root && ln -s ../../../../etc /esc/up")
	escOut := filepath.Join(host, "esc-out")
	e.must("cp", "c:/esc", escOut)
	if l, _ := os.Readlink(filepath.Join(escOut, "root")); l != "/" {
		t.Errorf("link: %q", l)
	}
}
