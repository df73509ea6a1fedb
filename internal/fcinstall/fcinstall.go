// Package fcinstall installs a Firecracker release into mvm's own bin directory
// (`mvmctl bootstrap --firecracker`): it downloads the release archive, checks it
// against the SHA-256 file published next to it, and unpacks firecracker and
// jailer. No registry mvm otherwise uses ships Firecracker, so this is the one
// download from GitHub; an archive placed by hand in the cache directory is used
// instead of the network.
package fcinstall

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// DefaultVersion is the release installed unless another is asked for: the 1.13
// line, which the API client (internal/vmm/firecracker/fcapi) is written for.
const DefaultVersion = "v1.13.1"

// DefaultBaseURL is where Firecracker publishes its releases.
const DefaultBaseURL = "https://github.com/firecracker-microvm/firecracker/releases/download"

// Arch is the only architecture mvm runs on.
const Arch = "x86_64"

// Programs are the files taken from a release, by the name they get in the bin
// directory.
var Programs = []string{"firecracker", "jailer"}

// StampFile records what was installed, so a second run can check the programs
// without the network.
const StampFile = "firecracker-release.json"

// DefaultTimeout bounds the whole download: the archive is tens of MB.
const DefaultTimeout = 10 * time.Minute

// maxArchive and maxProgram refuse absurd sizes instead of filling the disk.
const (
	maxArchive = 1 << 30
	maxProgram = 256 << 20
)

var versionRE = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+$`)

// Options configure Install.
type Options struct {
	// BinDir receives firecracker and jailer (<root>/bin).
	BinDir string
	// CacheDir is where an archive and its .sha256.txt placed by hand are looked
	// for before anything is downloaded (<root>/cache/firecracker).
	CacheDir string
	// Version is the release tag, such as v1.13.1; empty means DefaultVersion.
	Version string
	// BaseURL replaces DefaultBaseURL (tests serve releases locally).
	BaseURL string
	// Client makes the requests; nil means http.DefaultClient.
	Client *http.Client
	// Timeout bounds the download; zero means DefaultTimeout.
	Timeout time.Duration
	// Progress, when set, is told each step.
	Progress func(string)
}

// Result says what Install found or did.
type Result struct {
	Version       string            `json:"version"`
	ArchiveSHA256 string            `json:"archive_sha256"`
	Programs      map[string]string `json:"programs"` // name -> installed path
	// Installed is false when the release was already there and verified.
	Installed bool `json:"installed"`
	// Source is the URL or file the archive came from (empty when nothing was
	// installed).
	Source string `json:"source,omitempty"`
}

// Stamp is the content of StampFile.
type Stamp struct {
	Version       string            `json:"version"`
	ArchiveSHA256 string            `json:"archive_sha256"`
	Programs      map[string]string `json:"programs"` // name -> sha256 of the installed file
}

// Release names the files of one release.
type Release struct{ Version string }

// Archive is the release archive's file name.
func (r Release) Archive() string { return "firecracker-" + r.Version + "-" + Arch + ".tgz" }

// SumFile is the name of the published checksum file.
func (r Release) SumFile() string { return r.Archive() + ".sha256.txt" }

// member is the path of a program inside the archive.
func (r Release) member(program string) string {
	return "release-" + r.Version + "-" + Arch + "/" + program + "-" + r.Version + "-" + Arch
}

func (o Options) progress(s string) {
	if o.Progress != nil {
		o.Progress(s)
	}
}

func (o Options) url(file string) string {
	base := o.BaseURL
	if base == "" {
		base = DefaultBaseURL
	}
	return strings.TrimSuffix(base, "/") + "/" + o.Version + "/" + file
}

// CheckVersion refuses anything but a release tag; the tag also becomes part of
// URLs and file names.
func CheckVersion(v string) error {
	if !versionRE.MatchString(v) {
		return fmt.Errorf("firecracker version %q: want a release tag such as %s", v, DefaultVersion)
	}
	return nil
}

// ErrOffline wraps a failed download; its message says how to install by hand.
var ErrOffline = errors.New("cannot download the Firecracker release")

// Install makes sure the release's firecracker and jailer are in BinDir. When a
// stamp says they are and their checksums still match, it does nothing. The
// archive is streamed to a temporary file, checked against the published
// SHA-256, and each program is written to a temporary file and renamed into
// place, so a failed or refused download installs nothing.
func Install(ctx context.Context, o Options) (Result, error) {
	if o.Version == "" {
		o.Version = DefaultVersion
	}
	if err := CheckVersion(o.Version); err != nil {
		return Result{}, err
	}
	if o.BinDir == "" {
		return Result{}, errors.New("fcinstall: no bin directory")
	}
	rel := Release{Version: o.Version}
	res := Result{Version: o.Version, Programs: map[string]string{}}
	for _, p := range Programs {
		res.Programs[p] = filepath.Join(o.BinDir, p)
	}
	if st, err := Verify(o.BinDir); err == nil && st.Version == o.Version {
		res.ArchiveSHA256 = st.ArchiveSHA256
		return res, nil
	}
	archive, sum, source, cleanup, err := o.fetch(ctx, rel)
	if err != nil {
		return res, err
	}
	defer cleanup()
	if err := os.MkdirAll(o.BinDir, 0o755); err != nil {
		return res, err
	}
	o.progress("unpacking firecracker and jailer from " + rel.Archive())
	stamp := Stamp{Version: o.Version, ArchiveSHA256: sum, Programs: map[string]string{}}
	tmps, err := extract(archive, rel, o.BinDir, stamp.Programs)
	defer func() {
		for _, t := range tmps {
			_ = os.Remove(t)
		}
	}()
	if err != nil {
		return res, err
	}
	for _, p := range Programs {
		if err := os.Rename(tmps[p], res.Programs[p]); err != nil {
			return res, fmt.Errorf("install %s: %w", p, err)
		}
	}
	// The stamp goes last: after a crash between the renames, it does not match
	// and the next run installs again.
	raw, _ := json.MarshalIndent(stamp, "", "  ")
	if err := writeFileAtomic(filepath.Join(o.BinDir, StampFile), append(raw, '\n'), 0o644); err != nil {
		return res, err
	}
	res.ArchiveSHA256, res.Installed, res.Source = sum, true, source
	return res, nil
}

// fetch returns an open, verified archive and its SHA-256: the one placed in
// CacheDir if both files are there, else a download. cleanup closes it and
// removes a downloaded copy.
func (o Options) fetch(ctx context.Context, rel Release) (f *os.File, sum, source string, cleanup func(), err error) {
	if o.CacheDir != "" {
		local := filepath.Join(o.CacheDir, rel.Archive())
		sumRaw, serr := os.ReadFile(filepath.Join(o.CacheDir, rel.SumFile()))
		if _, aerr := os.Stat(local); aerr == nil && serr == nil {
			want, err := parseSumFile(sumRaw, rel.Archive())
			if err != nil {
				return nil, "", "", nil, fmt.Errorf("%s: %w", filepath.Join(o.CacheDir, rel.SumFile()), err)
			}
			o.progress("verifying " + local)
			f, err := os.Open(local)
			if err != nil {
				return nil, "", "", nil, err
			}
			got, err := hashReader(f, maxArchive)
			if err == nil && got != want {
				err = checksumError(local, got, want)
			}
			if err == nil {
				_, err = f.Seek(0, io.SeekStart)
			}
			if err != nil {
				f.Close()
				return nil, "", "", nil, err
			}
			return f, got, local, func() { f.Close() }, nil
		}
	}

	timeout := o.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := o.Client
	if client == nil {
		client = http.DefaultClient
	}
	sumURL, archiveURL := o.url(rel.SumFile()), o.url(rel.Archive())
	o.progress("downloading " + sumURL)
	sumRaw, err := get(ctx, client, sumURL, func(r io.Reader) ([]byte, error) { return io.ReadAll(io.LimitReader(r, 4096)) })
	if err != nil {
		return nil, "", "", nil, o.offline(rel, err)
	}
	want, err := parseSumFile(sumRaw, rel.Archive())
	if err != nil {
		return nil, "", "", nil, fmt.Errorf("%s: %w", sumURL, err)
	}
	// The archive is only read back, never renamed, so any directory of ours
	// will do; the cache keeps a killed download out of the bin directory.
	tmpDir := o.CacheDir
	if tmpDir == "" {
		tmpDir = o.BinDir
	}
	if err := os.MkdirAll(tmpDir, 0o755); err != nil {
		return nil, "", "", nil, err
	}
	tmp, err := os.CreateTemp(tmpDir, "."+rel.Archive()+".tmp-*")
	if err != nil {
		return nil, "", "", nil, err
	}
	drop := func() { tmp.Close(); os.Remove(tmp.Name()) }
	o.progress("downloading " + archiveURL)
	got, err := get(ctx, client, archiveURL, func(r io.Reader) ([]byte, error) {
		h := sha256.New()
		n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, maxArchive+1))
		if err == nil && n > maxArchive {
			err = fmt.Errorf("larger than %d bytes", maxArchive)
		}
		return []byte(hex.EncodeToString(h.Sum(nil))), err
	})
	if err != nil {
		drop()
		return nil, "", "", nil, o.offline(rel, err)
	}
	if string(got) != want {
		drop()
		return nil, "", "", nil, checksumError(archiveURL, string(got), want)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		drop()
		return nil, "", "", nil, err
	}
	return tmp, want, archiveURL, drop, nil
}

// get fetches url and hands the body to read.
func get(ctx context.Context, c *http.Client, url string, read func(io.Reader) ([]byte, error)) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	b, err := read(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return b, nil
}

// offline explains how to install without the network.
func (o Options) offline(rel Release, err error) error {
	where := "<root>/cache/firecracker"
	if o.CacheDir != "" {
		where = o.CacheDir
	}
	return fmt.Errorf("%w: %w\nfix: on a machine that can reach github.com, download\n  %s\n  %s\n"+
		"check the archive with `sha256sum -c %s` (the file holds the archive's SHA-256),\n"+
		"put both files in %s, and run `mvmctl bootstrap --firecracker --version %s` again: "+
		"it checks the archive against that checksum and installs firecracker and jailer into %s",
		ErrOffline, err, o.url(rel.Archive()), o.url(rel.SumFile()), rel.SumFile(), where, rel.Version, o.BinDir)
}

func checksumError(what, got, want string) error {
	return fmt.Errorf("%s: SHA-256 is %s, the published checksum is %s: refusing it (nothing was installed); "+
		"download it again, or compare with the release page", what, got, want)
}

// parseSumFile reads a sha256sum line: "<64 hex>  <name>" (the name is optional
// and, when there, must be the archive's).
func parseSumFile(raw []byte, archive string) (string, error) {
	fields := strings.Fields(string(raw))
	if len(fields) == 0 || len(fields[0]) != 64 {
		return "", errors.New("not a SHA-256 checksum file")
	}
	sum := strings.ToLower(fields[0])
	if _, err := hex.DecodeString(sum); err != nil {
		return "", errors.New("not a SHA-256 checksum file")
	}
	if len(fields) > 1 && strings.TrimPrefix(fields[1], "*") != archive {
		return "", fmt.Errorf("checksum is for %s, not %s", fields[1], archive)
	}
	return sum, nil
}

// extract writes each program of the release to a temporary file in dir (0755)
// and records its SHA-256 in sums. It returns the temporary files by program
// name, also on error, for the caller to remove.
func extract(archive io.Reader, rel Release, dir string, sums map[string]string) (map[string]string, error) {
	tmps := map[string]string{}
	want := map[string]string{}
	for _, p := range Programs {
		want[rel.member(p)] = p
	}
	gz, err := gzip.NewReader(archive)
	if err != nil {
		return tmps, fmt.Errorf("%s: %w", rel.Archive(), err)
	}
	tr := tar.NewReader(gz)
	for len(tmps) < len(Programs) {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return tmps, fmt.Errorf("%s: %w", rel.Archive(), err)
		}
		prog, ok := want[strings.TrimPrefix(path.Clean(h.Name), "./")]
		if !ok || tmps[prog] != "" {
			continue
		}
		if h.Typeflag != tar.TypeReg {
			return tmps, fmt.Errorf("%s: %s is not a regular file", rel.Archive(), h.Name)
		}
		if h.Size > maxProgram {
			return tmps, fmt.Errorf("%s: %s is larger than %d bytes", rel.Archive(), h.Name, maxProgram)
		}
		tmp, sum, err := writeTemp(dir, "."+prog+".tmp-*", tr)
		if tmp != "" {
			tmps[prog] = tmp
		}
		if err != nil {
			return tmps, fmt.Errorf("unpack %s: %w", h.Name, err)
		}
		sums[prog] = sum
	}
	for _, p := range Programs {
		if tmps[p] == "" {
			return tmps, fmt.Errorf("%s has no %s: is it a Firecracker %s release for %s?", rel.Archive(), rel.member(p), rel.Version, Arch)
		}
	}
	return tmps, nil
}

func writeTemp(dir, pattern string, r io.Reader) (string, string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", "", err
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(f, h), r)
	if err == nil {
		err = f.Chmod(0o755)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return f.Name(), hex.EncodeToString(h.Sum(nil)), err
}

// ErrNotInstalled is returned by Verify when BinDir holds no stamped release.
var ErrNotInstalled = errors.New("no Firecracker release installed by mvm")

// Verify reads the stamp in binDir and checks that every program still has the
// checksum it was installed with.
func Verify(binDir string) (Stamp, error) {
	return VerifyPrograms(binDir, Programs...)
}

// VerifyPrograms is Verify for some of the programs.
func VerifyPrograms(binDir string, programs ...string) (Stamp, error) {
	var st Stamp
	raw, err := os.ReadFile(filepath.Join(binDir, StampFile))
	if errors.Is(err, fs.ErrNotExist) {
		return st, ErrNotInstalled
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, fmt.Errorf("%s: %w", filepath.Join(binDir, StampFile), err)
	}
	for _, p := range programs {
		f, err := os.Open(filepath.Join(binDir, p))
		if err != nil {
			return st, err
		}
		sum, err := hashReader(f, maxProgram)
		f.Close()
		if err != nil {
			return st, err
		}
		if sum != st.Programs[p] {
			return st, fmt.Errorf("%s was changed since mvm installed %s", filepath.Join(binDir, p), st.Version)
		}
	}
	return st, nil
}

// Lookup finds a program the way the Firecracker backend does: mvm's own bin
// directory first, then PATH.
func Lookup(binDir, name string) (string, error) {
	if binDir != "" {
		if p, err := exec.LookPath(filepath.Join(binDir, name)); err == nil {
			return p, nil
		}
	}
	return exec.LookPath(name)
}

func hashReader(r io.Reader, limit int64) (string, error) {
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(r, limit+1))
	if err != nil {
		return "", err
	}
	if n > limit {
		return "", fmt.Errorf("larger than %d bytes", limit)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeFileAtomic writes via a temporary file and rename, so a reader never sees
// half a file.
func writeFileAtomic(p string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), p)
}
