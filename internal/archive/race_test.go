package archive

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestPackNeverFollowsSwappedLinks: a file or directory of the copied tree swapped for
// a symlink while Pack walks it (to /etc/shadow, a VM token) never gets the link's
// target into the stream.
func TestPackNeverFollowsSwappedLinks(t *testing.T) {
	secretDir := t.TempDir()
	secret := filepath.Join(secretDir, "secret")
	os.WriteFile(secret, []byte("TOPSECRET"), 0o600)
	for _, tc := range []struct{ name, entry, link string }{
		{"file", "f", secret},         // same size as the real file: only the content differs
		{"directory", "d", secretDir}, // d/secret inside
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := filepath.Join(t.TempDir(), "tree")
			os.MkdirAll(filepath.Join(src, "d"), 0o755)
			os.WriteFile(filepath.Join(src, "f"), []byte("harmless!"), 0o644)
			os.WriteFile(filepath.Join(src, "d", "secret"), []byte("harmless!"), 0o644)
			target := filepath.Join(src, tc.entry)
			keep := filepath.Join(t.TempDir(), "keep")
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { // rename real <-> link in a loop
				defer wg.Done()
				lnk := target + ".lnk"
				for {
					select {
					case <-stop:
						return
					default:
					}
					os.Rename(target, keep)
					os.Symlink(tc.link, lnk)
					os.Rename(lnk, target)
					time.Sleep(time.Microsecond)
					os.Remove(target)
					os.Rename(keep, target)
				}
			}()
			defer func() { close(stop); wg.Wait() }()
			deadline := time.Now().Add(2 * time.Second)
			for n := 0; time.Now().Before(deadline); n++ {
				var buf bytes.Buffer
				PackWith(context.Background(), &buf, src, PackOptions{})
				if bytes.Contains(buf.Bytes(), []byte("TOPSECRET")) {
					t.Fatalf("pack %d read the swapped-in link's target", n)
				}
			}
		})
	}
}

// TestUnpackNeverWritesThroughSwappedLinks: someone who can write in a directory of
// the destination swaps a directory the stream writes into for a symlink to another
// directory inside the destination's root (say /etc, copying into /); nothing may
// land there. Unpack checked each directory once and then wrote by path.
func TestUnpackNeverWritesThroughSwappedLinks(t *testing.T) {
	entries := []entry{dir("d/"), dir("d/sub/")}
	for i := 0; i < 100; i++ {
		entries = append(entries, file(fmt.Sprintf("d/sub/f%03d", i), "pwn"))
	}
	stream := tarOf(t, entries...)
	out := t.TempDir()
	victim := filepath.Join(out, "victim")
	os.Mkdir(victim, 0o755)
	sub := filepath.Join(out, "d", "sub")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if os.Rename(sub, sub+".keep") == nil {
				os.Symlink("../victim", sub)
				time.Sleep(time.Microsecond)
				os.Remove(sub)
				os.Rename(sub+".keep", sub)
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	deadline := time.Now().Add(2 * time.Second)
	for n := 0; time.Now().Before(deadline); n++ {
		os.RemoveAll(filepath.Join(out, "d"))
		os.Mkdir(filepath.Join(out, "d"), 0o777)
		Unpack(context.Background(), bytes.NewReader(stream), out, SourceInfo{Base: "d", IsDir: true}, UnpackOptions{})
		if got, _ := os.ReadDir(victim); len(got) > 0 {
			t.Fatalf("unpack %d wrote %s into the directory a symlink was swapped to", n, got[0].Name())
		}
	}
}

// TestUnpackDeepTreeDescriptors: the directories held open are those on the way to
// the current entry, not every directory of the stream.
func TestUnpackDeepTreeDescriptors(t *testing.T) {
	var entries []entry
	entries = append(entries, dir("d/"))
	for i := 0; i < 3000; i++ {
		entries = append(entries, dir(fmt.Sprintf("d/%04d/", i)), file(fmt.Sprintf("d/%04d/f", i), "x"))
	}
	out := t.TempDir()
	before := openFDs(t)
	if _, err := Unpack(context.Background(), bytes.NewReader(tarOf(t, entries...)), out, SourceInfo{Base: "d", IsDir: true}, UnpackOptions{}); err != nil {
		t.Fatal(err)
	}
	if after := openFDs(t); after > before+2 {
		t.Fatalf("%d descriptors open after the unpack, %d before", after, before)
	}
}

func openFDs(t *testing.T) int {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	return len(fds)
}
