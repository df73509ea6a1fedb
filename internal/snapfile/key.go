package snapfile

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// keySize is the size of the sealing key: the block-size-independent HMAC key
// length that matches SHA-256's output.
const keySize = 32

// LoadOrCreateKey returns the host's snapshot sealing key stored at path: 32
// random bytes in a file of mode 0600. If the file does not exist it is
// created atomically: the key is written to a temporary file in the same
// directory, fsynced and hard-linked to path, which fails rather than replace
// a key another process created first, so concurrent callers all end up with
// the same key. The directory must exist.
//
// A key file of the wrong size or readable or writable by group or others is
// refused with an error naming the fix: a leaked key would let anyone forge
// snapshots, and a damaged one would make every snapshot look tampered with.
func LoadOrCreateKey(path string) ([]byte, error) {
	key, err := readKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	if err := createKey(path); err != nil {
		return nil, err
	}
	// Read back what is at path: ours, or the one of a process that won the race.
	return readKey(path)
}

func readKey(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0) // a planted symlink must not redirect the read
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("snapfile: snapshot key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("snapfile: snapshot key: %w", err)
	}
	switch {
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("snapfile: snapshot key %s is not a regular file; remove it and a new key will be created (existing snapshots then fail verification)", path)
	case fi.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("snapfile: snapshot key %s has mode %04o, group or others may access it; fix with: chmod 600 %s (or remove it if it may have leaked; existing snapshots then fail verification)", path, fi.Mode().Perm(), path)
	case fi.Size() != keySize:
		return nil, fmt.Errorf("snapfile: snapshot key %s is %d bytes, want %d; remove it and a new key will be created (existing snapshots then fail verification)", path, fi.Size(), keySize)
	}
	key := make([]byte, keySize)
	if _, err := io.ReadFull(f, key); err != nil {
		return nil, fmt.Errorf("snapfile: snapshot key %s: %w", path, err)
	}
	return key, nil
}

// createKey puts a new key at path unless a file is already there.
func createKey(path string) (err error) {
	key := make([]byte, keySize)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("snapfile: create snapshot key: %w", err)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*") // O_EXCL, mode 0600
	if err != nil {
		return fmt.Errorf("snapfile: create snapshot key: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after the link, path keeps the key
	defer f.Close()
	if err := f.Chmod(0o600); err != nil { // independent of umask
		return fmt.Errorf("snapfile: create snapshot key: %w", err)
	}
	if _, err := f.Write(key); err != nil {
		return fmt.Errorf("snapfile: create snapshot key: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("snapfile: create snapshot key: %w", err)
	}
	// link, unlike rename, never replaces an existing file.
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil // another process created it first; use theirs
		}
		return fmt.Errorf("snapfile: create snapshot key: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("snapfile: create snapshot key: %w", err)
	}
	return nil
}
