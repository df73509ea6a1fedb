package snapfile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestLoadOrCreateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "snapshot.key")
	key, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(key) != keySize {
		t.Fatalf("key of %d bytes", len(key))
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", fi.Mode().Perm())
	}
	again, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(key, again) {
		t.Error("second call returned another key")
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only the key", len(ents))
	}
}

func TestLoadOrCreateKeyConcurrent(t *testing.T) {
	for range 20 {
		dir := t.TempDir()
		path := filepath.Join(dir, "snapshot.key")
		var wg sync.WaitGroup
		keys := make([][]byte, 8)
		errs := make([]error, len(keys))
		for i := range keys {
			wg.Go(func() { keys[i], errs[i] = LoadOrCreateKey(path) })
		}
		wg.Wait()
		for i := range keys {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			if !bytes.Equal(keys[i], keys[0]) {
				t.Fatalf("caller %d got another key", i)
			}
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Fatalf("directory holds %d entries, want only the key", len(ents))
		}
	}
}

func TestLoadOrCreateKeyRefuses(t *testing.T) {
	tests := []struct {
		name    string
		content []byte
		mode    os.FileMode
		fix     string // the error must name the fix
	}{
		{"group readable", make([]byte, keySize), 0o640, "chmod 600"},
		{"world readable", make([]byte, keySize), 0o604, "chmod 600"},
		{"group writable", make([]byte, keySize), 0o620, "chmod 600"},
		{"short", make([]byte, keySize-1), 0o600, "remove it"},
		{"long", make([]byte, keySize+1), 0o600, "remove it"},
		{"empty", nil, 0o600, "remove it"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "snapshot.key")
			if err := os.WriteFile(path, tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.mode); err != nil {
				t.Fatal(err)
			}
			_, err := LoadOrCreateKey(path)
			if err == nil {
				t.Fatal("key accepted")
			}
			if !strings.Contains(err.Error(), tc.fix) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the fix %q for %s", err, tc.fix, path)
			}
			if b, _ := os.ReadFile(path); !bytes.Equal(b, tc.content) {
				t.Error("refused key file was changed")
			}
		})
	}

	t.Run("directory", func(t *testing.T) {
		if _, err := LoadOrCreateKey(t.TempDir()); err == nil {
			t.Fatal("directory accepted as key")
		}
	})
	t.Run("missing directory", func(t *testing.T) {
		if _, err := LoadOrCreateKey(filepath.Join(t.TempDir(), "no", "key")); err == nil {
			t.Fatal("key created in a missing directory")
		}
	})
	t.Run("symlink", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(dir, "target")
		if err := os.WriteFile(target, make([]byte, keySize), 0o600); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(dir, "snapshot.key")
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadOrCreateKey(link); err == nil {
			t.Fatal("symlinked key accepted")
		}
	})
}
