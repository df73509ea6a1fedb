// Package archive implements docker cp's copy semantics over a tar stream,
// safe against path escapes.
//
// The sending side describes its source with [Stat], sends that description
// to the receiver, and then streams the source with [Pack]. The receiving
// side hands the description and the stream to [Unpack], which applies
// docker cp's destination rules and refuses any entry that would land
// outside the copy's target. [HashingWriter] and [HashingReader] let the two
// ends check that the whole stream arrived intact.
//
// The package knows nothing about how the stream is transported.
package archive

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// ErrUnsafeEntry is wrapped by every error that refuses a tar entry (or a
// SourceInfo) because it would write outside the copy's target or because it
// does not match what the sender declared.
var ErrUnsafeEntry = errors.New("unsafe archive entry")

// SourceInfo describes a copy source the way docker cp sees it. The sender
// produces it with [Stat] and the receiver passes it to [Unpack]; it decides
// which destination rule applies and which entry names the stream may hold.
type SourceInfo struct {
	// Base is the name the copied file or directory gets: the last element
	// of the cleaned, absolute source path.
	Base string
	// IsDir reports whether the source is a directory (after following a
	// symlink named with a trailing "/" or "/.").
	IsDir bool
	// ContentsOnly is set when the source path ends in "/." : the
	// directory's contents are copied, not the directory itself.
	ContentsOnly bool
}

// Result reports what [Pack] or [Unpack] did.
type Result struct {
	// Entries is the number of tar entries written (Pack) or applied
	// (Unpack): files, directories and symlinks.
	Entries int
	// Bytes is the number of regular-file content bytes copied.
	Bytes int64
	// Skipped lists, for Pack only, the entry names of sockets, devices and
	// FIFOs that were left out of the stream, as docker cp cannot
	// meaningfully copy them either.
	Skipped []string
}

// Stat describes the source path as docker cp sees it.
//
// The source itself is not followed if it is a symlink: it is copied as a
// link. A trailing "/" or "/." does follow it, because the kernel resolves
// a symlink in the last component of such a path; that is docker cp's rule
// too, so the path is deliberately not cleaned before the Lstat.
func Stat(path string) (SourceInfo, error) {
	info, _, err := stat(path)
	return info, err
}

func stat(src string) (SourceInfo, fs.FileInfo, error) {
	fi, err := os.Lstat(src)
	if errors.Is(err, fs.ErrNotExist) {
		return SourceInfo{}, nil, fmt.Errorf("source path %q does not exist: %w", src, err)
	}
	if err != nil {
		return SourceInfo{}, nil, fmt.Errorf("stat source: %w", err)
	}
	switch t := fi.Mode().Type(); {
	case t.IsRegular(), t == fs.ModeDir, t == fs.ModeSymlink:
	default:
		return SourceInfo{}, nil, fmt.Errorf("source path %q is not a regular file, directory or symlink (%v)", src, t)
	}
	// Abs gives "." and ".." sources a real name.
	abs, err := filepath.Abs(src)
	if err != nil {
		return SourceInfo{}, nil, fmt.Errorf("source path %q: %w", src, err)
	}
	info := SourceInfo{
		Base:  filepath.Base(abs),
		IsDir: fi.IsDir(),
		// filepath.Base ignores trailing separators, so "dir/./" counts too.
		ContentsOnly: filepath.Base(src) == ".",
	}
	if err := info.validate(); err != nil {
		return SourceInfo{}, nil, fmt.Errorf("source path %q: %w", src, err)
	}
	return info, fi, nil
}

// Describe gives the SourceInfo of a path on the other end of a copy from the path
// alone, as [Stat] would there (relative paths are taken from "/", the agent's working
// directory), with isDir from the other end. A receiver uses it rather than the
// sender's own description, so a hostile sender cannot choose the name its data lands
// under or have it merged into the destination.
func Describe(p string, isDir bool) (SourceInfo, error) {
	if !path.IsAbs(p) {
		p = "/" + p
	}
	info := SourceInfo{
		Base:         path.Base(path.Clean(p)),
		IsDir:        isDir,
		ContentsOnly: path.Base(p) == ".",
	}
	if err := info.validate(); err != nil {
		return SourceInfo{}, fmt.Errorf("source path %q: %w", p, err)
	}
	return info, nil
}

// validate checks a SourceInfo that may have come from an untrusted sender:
// Base becomes a path element on the receiver, so it must be exactly one.
func (s SourceInfo) validate() error {
	if s.ContentsOnly {
		if !s.IsDir {
			return fmt.Errorf("%w: contents-only source must be a directory", ErrUnsafeEntry)
		}
		return nil // Base is not used
	}
	if !validBase(s.Base) {
		if s.Base == string(filepath.Separator) {
			return fmt.Errorf("cannot copy the root directory itself; use %q to copy its contents", "/.")
		}
		return fmt.Errorf("%w: invalid source name %q", ErrUnsafeEntry, s.Base)
	}
	return nil
}

func validBase(name string) bool {
	return name != "" && name != "." && name != ".." &&
		!strings.ContainsAny(name, "/\x00"+string(filepath.Separator)) &&
		filepath.IsLocal(name)
}

// cleanEntryName validates a tar entry name from an untrusted stream and
// returns it in canonical slash-separated form. Absolute names and names
// with any ".." element are refused outright, even when they would clean to
// something harmless ("a/../b"): a well-formed stream never contains them,
// so they signal a hostile or broken sender.
func cleanEntryName(name string) (string, error) {
	switch {
	case name == "":
		return "", fmt.Errorf("%w: empty entry name", ErrUnsafeEntry)
	case strings.ContainsRune(name, 0):
		return "", fmt.Errorf("%w: entry %q: name contains NUL", ErrUnsafeEntry, name)
	case strings.HasPrefix(name, "/"):
		return "", fmt.Errorf("%w: entry %q: absolute name", ErrUnsafeEntry, name)
	case filepath.Separator != '/' && strings.ContainsRune(name, filepath.Separator):
		return "", fmt.Errorf("%w: entry %q: name contains %q", ErrUnsafeEntry, name, filepath.Separator)
	}
	for _, elem := range strings.Split(name, "/") {
		if elem == ".." {
			return "", fmt.Errorf("%w: entry %q: name contains \"..\"", ErrUnsafeEntry, name)
		}
	}
	clean := path.Clean(name)
	if clean == "." || !filepath.IsLocal(filepath.FromSlash(clean)) {
		return "", fmt.Errorf("%w: entry %q: not a local name", ErrUnsafeEntry, name)
	}
	return clean, nil
}
