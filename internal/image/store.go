// Package image builds and stores microVM images. An image is a directory named by
// the digest of its inputs, holding a kernel, an initramfs with mvm-agent as /init, an
// ext4 rootfs and a manifest; names ("default") point at digests. Unchanged inputs are
// never rebuilt, and a name moves to a new build atomically.
package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/mvm-dev/mvm/internal/vm"
)

// Files of an image directory.
const (
	FileKernel   = "vmlinux"
	FileInitrd   = "initrd.gz"
	FileRootfs   = "rootfs.ext4"
	FileManifest = "manifest.json"
)

// DefaultName is the image `mvmctl up` boots unless told otherwise.
const DefaultName = "default"

// Manifest describes a built image.
type Manifest struct {
	Name          string            `json:"name"`
	Digest        string            `json:"digest"`
	Created       time.Time         `json:"created"`
	KernelRelease string            `json:"kernel_release"`
	KernelPackage string            `json:"kernel_package"`
	KernelFormat  string            `json:"kernel_format"` // "elf-pvh" or "bzimage"
	Backends      []string          `json:"backends"`
	AgentVersion  string            `json:"agent_version"`
	Modules       []string          `json:"modules"`
	Sizes         map[string]int64  `json:"sizes"`
	Inputs        map[string]string `json:"inputs"` // input name -> sha256

	// Unsupported gives, per backend the kernel cannot boot on, the reason.
	// Manifests written before it existed have neither it nor "firecracker"
	// in Backends; Fit reports them as not known.
	Unsupported map[string]string `json:"unsupported_backends,omitempty"`
	// FitRules is the version of the rules Backends was decided by (see
	// image.FitRules); 0 for manifests from before it was recorded.
	FitRules int `json:"fit_rules,omitempty"`
}

// Image is a stored image.
type Image struct {
	Manifest
	Dir string
}

// Path returns the path of one of the image's files.
func (i Image) Path(file string) string { return filepath.Join(i.Dir, file) }

// Store is the image directory under the mvm root.
type Store struct{ Dir string }

func (s Store) refPath(name string) string   { return filepath.Join(s.Dir, "refs", name) }
func (s Store) blobDir(digest string) string { return filepath.Join(s.Dir, "sha256-"+digest) }
func (s Store) has(digest string) bool {
	_, err := os.Stat(filepath.Join(s.blobDir(digest), FileManifest))
	return err == nil
}

// ErrNotFound is returned for an unknown image name.
var ErrNotFound = errors.New("image not found")

// Get resolves a name (or a digest prefix of at least 12 characters) to an image.
func (s Store) Get(name string) (Image, error) {
	digest := ""
	if b, err := os.ReadFile(s.refPath(name)); err == nil {
		digest = strings.TrimSpace(string(b))
	} else if errors.Is(err, fs.ErrPermission) {
		return Image{}, fmt.Errorf("image %q: %w", name, err)
	} else if len(name) >= 12 {
		matches, _ := filepath.Glob(filepath.Join(s.Dir, "sha256-"+name+"*"))
		if len(matches) == 1 {
			digest = strings.TrimPrefix(filepath.Base(matches[0]), "sha256-")
		}
	}
	if digest == "" {
		hint := "run `mvmctl bootstrap` to build the default image"
		if name != DefaultName {
			hint = "see `mvmctl image ls` for the images there are"
		}
		return Image{}, fmt.Errorf("%w: %q: %s", ErrNotFound, name, hint)
	}
	return s.load(digest, name)
}

func (s Store) load(digest, name string) (Image, error) {
	dir := s.blobDir(digest)
	raw, err := os.ReadFile(filepath.Join(dir, FileManifest))
	if err != nil {
		return Image{}, fmt.Errorf("image %s: %w (rebuild it with `mvmctl bootstrap`)", name, err)
	}
	var m Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return Image{}, fmt.Errorf("image %s: bad manifest: %w", name, err)
	}
	m.Name = name
	return Image{Manifest: m, Dir: dir}, nil
}

// List returns every named image.
func (s Store) List() ([]Image, error) {
	entries, err := os.ReadDir(filepath.Join(s.Dir, "refs"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Image
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		img, err := s.Get(e.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Tag points name at digest, replacing any previous target atomically.
func (s Store) Tag(name, digest string) error {
	if err := vm.ValidateName(name); err != nil {
		return fmt.Errorf("image %w", err)
	}
	if !s.has(digest) {
		return fmt.Errorf("image sha256-%s is not in the store", digest)
	}
	return writeFileAtomic(s.refPath(name), []byte(digest+"\n"), 0o644)
}

// DiskUsage is the allocated size of an image's files.
func (i Image) DiskUsage() int64 {
	var total int64
	for _, f := range []string{FileKernel, FileInitrd, FileRootfs} {
		total += allocated(i.Path(f))
	}
	return total
}

// writeFileAtomic writes via a temporary file and rename, so readers never see a
// partial file and a crash leaves the old content.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
