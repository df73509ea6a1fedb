package archive

import (
	"bytes"
	"context"
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
