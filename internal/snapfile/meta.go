package snapfile

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// maxMetaSize bounds meta.json. Real ones are a few KiB; the bound keeps a
// corrupt or hostile file from being read into memory whole.
const maxMetaSize = 1 << 20

// FileEntry records one file of a snapshot and the digest of its content.
type FileEntry struct {
	Name   string `json:"name"` // base name inside the snapshot directory: memory, rootfs, data, token
	Digest Digest `json:"digest"`
}

// Meta is the content of a snapshot's meta.json: what the snapshot is, the
// facts a host must match to restore it, and the digest of every file.
type Meta struct {
	Format         int       `json:"format"`
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	Kind           string    `json:"kind"`   // "snapshot", "template", "sleep"
	Source         string    `json:"source"` // VM name it was taken from
	CreatedAt      time.Time `json:"created_at"`
	MvmVersion     string    `json:"mvm_version"`
	AgentProto     int       `json:"agent_proto"`
	Backend        string    `json:"backend"`         // "qemu" or "firecracker"
	BackendVersion string    `json:"backend_version"` // e.g. "7.2.19"
	Accel          string    `json:"accel"`           // "kvm" or "tcg"
	CPUModel       string    `json:"cpu_model"`
	CPUFlags       []string  `json:"cpu_flags"`
	ImageDigest    string    `json:"image_digest"`
	Kernel         string    `json:"kernel"`
	CPUs           int       `json:"cpus"`
	MemoryMiB      int64     `json:"memory_mib"`
	DataDiskMiB    int64     `json:"data_disk_mib,omitempty"`
	NIC            bool      `json:"nic"`
	// NICNoGuestAnnounce says the NIC lacked virtio-net's guest-announce feature
	// (vmm.Config.NICGuestAnnounce); a restore must match it. Absent in
	// snapshots taken before mvm turned it off.
	NICNoGuestAnnounce bool `json:"nic_no_guest_announce,omitempty"`
	// Jailed says Firecracker ran under its jailer: the paths it recorded are
	// its chroot's, so the snapshot restores under the jailer only.
	Jailed bool        `json:"jailed,omitempty"`
	Files  []FileEntry `json:"files"`
}

// File returns the entry for the file with the given base name.
func (m Meta) File(name string) (FileEntry, bool) {
	for _, f := range m.Files {
		if f.Name == name {
			return f, true
		}
	}
	return FileEntry{}, false
}

// Validate checks that m is well formed. It does not check that the files
// exist or match their digests; CopyVerified and DigestFile do that.
func (m Meta) Validate() error {
	switch {
	case m.Format != Format:
		return fmt.Errorf("snapfile: meta format %d, this mvm reads format %d", m.Format, Format)
	case m.ID == "":
		return errors.New("snapfile: meta: empty id")
	case m.Name == "":
		return errors.New("snapfile: meta: empty name")
	case m.Backend == "":
		return errors.New("snapfile: meta: empty backend")
	case m.CPUs <= 0:
		return fmt.Errorf("snapfile: meta: cpus %d, want > 0", m.CPUs)
	case m.MemoryMiB <= 0:
		return fmt.Errorf("snapfile: meta: memory_mib %d, want > 0", m.MemoryMiB)
	}
	seen := make(map[string]bool, len(m.Files))
	for _, f := range m.Files {
		switch f.Name {
		case FileMemory, FileState, FileRootfs, FileData, FileToken, FileKernel:
		default:
			// Also keeps paths such as "../x" out of the snapshot directory.
			return fmt.Errorf("snapfile: meta: file name %q is not one of %s, %s, %s, %s, %s, %s",
				f.Name, FileMemory, FileState, FileRootfs, FileData, FileToken, FileKernel)
		}
		if seen[f.Name] {
			return fmt.Errorf("snapfile: meta: file %q listed twice", f.Name)
		}
		seen[f.Name] = true
		if f.Digest.Size < 0 {
			return fmt.Errorf("snapfile: meta: file %q: negative size %d", f.Name, f.Digest.Size)
		}
		if !isLowerHex(f.Digest.SHA256, sha256.Size*2) {
			// Lowercase only: digests are compared as strings.
			return fmt.Errorf("snapfile: meta: file %q: sha256 %q is not 64 lowercase hex digits", f.Name, f.Digest.SHA256)
		}
	}
	return nil
}

func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// sealed is the layout of meta.json.
type sealed struct {
	Meta Meta   `json:"meta"`
	MAC  string `json:"mac"` // hex HMAC-SHA256(key, json.Marshal(Meta))
}

// mac returns the HMAC of m's canonical encoding. json.Marshal of a struct is
// deterministic, so the MAC does not depend on how the file was formatted:
// Open recomputes it over the re-marshalled decoded Meta, which also means
// that whatever Open returns is exactly what was sealed.
func mac(key []byte, m Meta) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	h := hmac.New(sha256.New, key)
	h.Write(b)
	return h.Sum(nil), nil
}

// Seal validates m and returns the content of a meta.json holding m and its
// MAC under key.
func Seal(key []byte, m Meta) ([]byte, error) {
	if len(key) == 0 {
		return nil, errors.New("snapfile: seal: empty key")
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	sum, err := mac(key, m)
	if err != nil {
		return nil, fmt.Errorf("snapfile: seal: %w", err)
	}
	b, err := json.MarshalIndent(sealed{Meta: m, MAC: hex.EncodeToString(sum)}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("snapfile: seal: %w", err)
	}
	return append(b, '\n'), nil
}

// Open parses the content of a meta.json, checks its MAC under key and
// validates the Meta. The MAC is recomputed over the re-marshalled decoded
// Meta, so what Open returns is exactly what was sealed, whatever the parser
// tolerated. A wrong MAC, or a file that is not Seal's output up to
// whitespace, yields an error wrapping ErrTampered; malformed input (invalid
// JSON, unknown fields, trailing data, more than 1 MiB) yields another error.
func Open(key []byte, data []byte) (Meta, error) {
	if len(key) == 0 {
		return Meta{}, errors.New("snapfile: open meta: empty key")
	}
	if len(data) > maxMetaSize {
		return Meta{}, fmt.Errorf("snapfile: open meta: %d bytes, more than the limit of %d", len(data), maxMetaSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var s sealed
	if err := dec.Decode(&s); err != nil {
		return Meta{}, fmt.Errorf("snapfile: open meta: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Meta{}, errors.New("snapfile: open meta: trailing data after the JSON object")
	}
	got, err := hex.DecodeString(s.MAC)
	if err != nil || len(got) != sha256.Size {
		return Meta{}, fmt.Errorf("snapfile: open meta: mac is not %d hex digits", sha256.Size*2)
	}
	want, err := mac(key, s.Meta)
	if err != nil {
		return Meta{}, fmt.Errorf("snapfile: open meta: %w", err)
	}
	if !hmac.Equal(got, want) {
		return Meta{}, fmt.Errorf("snapfile: meta MAC mismatch (or sealed with another host's key): %w", ErrTampered)
	}
	// The MAC covers the decoded content, but encoding/json also accepts keys
	// in any letter case, duplicate keys and uppercase hex in the MAC, so an
	// edited file could still open. Require the input to be what Seal wrote,
	// up to whitespace, so that any edit is refused.
	if err := checkCanonical(data, sealed{Meta: s.Meta, MAC: hex.EncodeToString(want)}); err != nil {
		return Meta{}, err
	}
	if err := s.Meta.Validate(); err != nil {
		return Meta{}, err
	}
	return s.Meta, nil
}

// checkCanonical reports ErrTampered unless data, without insignificant
// whitespace, is the encoding of s (as Seal writes it, with a lowercase MAC).
func checkCanonical(data []byte, s sealed) error {
	want, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("snapfile: open meta: %w", err)
	}
	var got bytes.Buffer
	got.Grow(len(want))
	if err := json.Compact(&got, data); err != nil {
		return fmt.Errorf("snapfile: open meta: %w", err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		return fmt.Errorf("snapfile: meta.json was edited (not as written by mvm): %w", ErrTampered)
	}
	return nil
}

// Sealed reports whether dir holds a snapshot's metadata (a saved state that is
// complete: WriteMeta comes last), without checking it.
func Sealed(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, MetaFile))
	return err == nil
}

// WriteMeta seals m and writes it to dir/meta.json with mode 0600. The write
// is atomic (temporary file, fsync, rename, fsync of dir), so a crash leaves
// either no meta.json or a complete one, never a torn one.
func WriteMeta(dir string, key []byte, m Meta) error {
	b, err := Seal(key, m)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(dir, MetaFile, b); err != nil {
		return fmt.Errorf("snapfile: write meta: %w", err)
	}
	return nil
}

// ReadMeta reads and opens dir/meta.json (see Open).
func ReadMeta(dir string, key []byte) (Meta, error) {
	f, err := os.Open(filepath.Join(dir, MetaFile))
	if err != nil {
		return Meta{}, fmt.Errorf("snapfile: read meta: %w", err)
	}
	defer f.Close()
	// Read one byte past the limit so Open sees an oversized file as such.
	b, err := io.ReadAll(io.LimitReader(f, maxMetaSize+1))
	if err != nil {
		return Meta{}, fmt.Errorf("snapfile: read meta: %w", err)
	}
	return Open(key, b)
}

// writeFileAtomic replaces dir/name with data (mode 0600) so that readers and
// crashes see either the old or the new content in full.
func writeFileAtomic(dir, name string, data []byte) (err error) {
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir makes a rename or link in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
