package fcinstall

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

const testVersion = "v1.13.1"

// fakeArchive builds a release archive shaped like Firecracker's: the programs
// under release-<v>-x86_64/ with their versioned names, plus files mvm ignores.
func fakeArchive(t *testing.T, version string, members map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	dir := "release-" + version + "-x86_64/"
	if err := tw.WriteHeader(&tar.Header{Name: dir, Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
		t.Fatal(err)
	}
	for name, body := range members {
		h := &tar.Header{Name: dir + name, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(body))}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func fullRelease(t *testing.T) []byte {
	return fakeArchive(t, testVersion, map[string]string{
		"firecracker-" + testVersion + "-x86_64":       "#!/bin/sh\necho Firecracker " + testVersion + "\n",
		"jailer-" + testVersion + "-x86_64":            "#!/bin/sh\necho Jailer " + testVersion + "\n",
		"seccompiler-bin-" + testVersion + "-x86_64":   "ignored",
		"firecracker-" + testVersion + "-x86_64.debug": "ignored",
		"SHA256SUMS": "ignored",
	})
}

func sumLine(b []byte, name string) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]) + "  " + name + "\n"
}

// server serves one release and counts archive downloads.
type server struct {
	*httptest.Server
	archive   []byte
	sum       string
	downloads atomic.Int32
}

func newServer(t *testing.T, archive []byte, sum string) *server {
	s := &server{archive: archive, sum: sum}
	rel := Release{Version: testVersion}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/" + testVersion + "/" + rel.SumFile():
			_, _ = w.Write([]byte(s.sum))
		case "/" + testVersion + "/" + rel.Archive():
			s.downloads.Add(1)
			_, _ = w.Write(s.archive)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *server) options(t *testing.T) Options {
	return Options{BinDir: filepath.Join(t.TempDir(), "bin"), CacheDir: t.TempDir(), BaseURL: s.URL, Client: s.Client()}
}

// entries lists a directory, so tests can see that no temporary file is left.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestInstallVerifiesUnpacksAndIsIdempotent(t *testing.T) {
	archive := fullRelease(t)
	s := newServer(t, archive, sumLine(archive, Release{testVersion}.Archive()))
	o := s.options(t)
	ctx := context.Background()

	res, err := Install(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Installed || res.Version != testVersion || !strings.HasSuffix(res.Source, Release{testVersion}.Archive()) {
		t.Errorf("result %+v", res)
	}
	for _, p := range Programs {
		fi, err := os.Stat(filepath.Join(o.BinDir, p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o755 {
			t.Errorf("%s mode %v, want 0755", p, fi.Mode().Perm())
		}
		if res.Programs[p] != filepath.Join(o.BinDir, p) {
			t.Errorf("Programs[%s] = %q", p, res.Programs[p])
		}
	}
	body, _ := os.ReadFile(filepath.Join(o.BinDir, "jailer"))
	if !strings.Contains(string(body), "Jailer "+testVersion) {
		t.Errorf("jailer holds %q", body)
	}
	if got := strings.Join(entries(t, o.BinDir), " "); got != "firecracker firecracker-release.json jailer" {
		t.Errorf("bin dir holds %s", got)
	}
	if got := entries(t, o.CacheDir); len(got) != 0 {
		t.Errorf("the downloaded archive was left in the cache: %v", got)
	}
	if st, err := Verify(o.BinDir); err != nil || st.Version != testVersion || st.ArchiveSHA256 != res.ArchiveSHA256 {
		t.Errorf("Verify: %+v, %v", st, err)
	}

	// Again: verified from the stamp, nothing downloaded.
	res, err = Install(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if res.Installed || s.downloads.Load() != 1 {
		t.Errorf("second run installed=%v after %d downloads, want nothing done", res.Installed, s.downloads.Load())
	}

	// A program changed behind mvm's back is installed again.
	if err := os.WriteFile(filepath.Join(o.BinDir, "firecracker"), []byte("tampered"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(o.BinDir); err == nil {
		t.Error("Verify accepted a changed firecracker")
	}
	res, err = Install(ctx, o)
	if err != nil || !res.Installed || s.downloads.Load() != 2 {
		t.Fatalf("after tampering: %+v, %v, %d downloads", res, err, s.downloads.Load())
	}
	if _, err := Verify(o.BinDir); err != nil {
		t.Error(err)
	}
}

func TestInstallRefusesWrongChecksum(t *testing.T) {
	archive := fullRelease(t)
	s := newServer(t, archive, sumLine([]byte("something else"), Release{testVersion}.Archive()))
	o := s.options(t)
	_, err := Install(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "refusing it (nothing was installed)") {
		t.Fatalf("err %v, want a refused checksum", err)
	}
	if got := entries(t, o.BinDir); len(got) != 0 {
		t.Errorf("bin dir holds %v after a refused archive", got)
	}
	if got := entries(t, o.CacheDir); len(got) != 0 {
		t.Errorf("cache dir holds %v after a refused archive", got)
	}
}

func TestInstallRefusesChecksumOfAnotherFile(t *testing.T) {
	archive := fullRelease(t)
	s := newServer(t, archive, sumLine(archive, "firecracker-v1.12.0-x86_64.tgz"))
	_, err := Install(context.Background(), s.options(t))
	if err == nil || !strings.Contains(err.Error(), "checksum is for firecracker-v1.12.0-x86_64.tgz") {
		t.Fatalf("err %v", err)
	}
}

func TestInstallMissingProgram(t *testing.T) {
	archive := fakeArchive(t, testVersion, map[string]string{
		"firecracker-" + testVersion + "-x86_64": "#!/bin/sh\n",
	})
	s := newServer(t, archive, sumLine(archive, Release{testVersion}.Archive()))
	o := s.options(t)
	_, err := Install(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "has no release-"+testVersion+"-x86_64/jailer-"+testVersion+"-x86_64") {
		t.Fatalf("err %v, want the missing jailer named", err)
	}
	if got := entries(t, o.BinDir); len(got) != 0 {
		t.Errorf("bin dir holds %v after a failed install", got)
	}
}

func TestInstallOfflineSaysWhatToDo(t *testing.T) {
	s := newServer(t, nil, "")
	o := s.options(t)
	s.Close() // nothing listens any more: as offline as it gets
	_, err := Install(context.Background(), o)
	if !errors.Is(err, ErrOffline) {
		t.Fatalf("err %v, want ErrOffline", err)
	}
	rel := Release{testVersion}
	for _, want := range []string{s.URL + "/" + testVersion + "/" + rel.Archive(), s.URL + "/" + testVersion + "/" + rel.SumFile(),
		"sha256sum -c " + rel.SumFile(), "put both files in " + o.CacheDir, o.BinDir} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("offline error lacks %q:\n%v", want, err)
		}
	}
}

func TestInstallFromPlacedArchive(t *testing.T) {
	archive := fullRelease(t)
	rel := Release{testVersion}
	o := Options{BinDir: filepath.Join(t.TempDir(), "bin"), CacheDir: t.TempDir(), BaseURL: "http://127.0.0.1:1/unused"}
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(o.CacheDir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(rel.Archive(), archive)
	write(rel.SumFile(), []byte(sumLine([]byte("not it"), rel.Archive())))
	if _, err := Install(context.Background(), o); err == nil || !strings.Contains(err.Error(), "refusing it") {
		t.Fatalf("placed archive with a wrong checksum: %v", err)
	}
	if got := entries(t, o.BinDir); len(got) != 0 {
		t.Errorf("bin dir holds %v after a refused archive", got)
	}
	write(rel.SumFile(), []byte(sumLine(archive, rel.Archive())))
	res, err := Install(context.Background(), o)
	if err != nil || !res.Installed || res.Source != filepath.Join(o.CacheDir, rel.Archive()) {
		t.Fatalf("placed archive: %+v, %v", res, err)
	}
}

func TestInstallRejectsBadVersion(t *testing.T) {
	for _, v := range []string{"1.13.1", "v1.13", "v1.13.1/../../x", "latest"} {
		if _, err := Install(context.Background(), Options{BinDir: t.TempDir(), Version: v}); err == nil || !strings.Contains(err.Error(), "want a release tag") {
			t.Errorf("version %q: %v", v, err)
		}
	}
}

func TestLookupPrefersBinDir(t *testing.T) {
	own, onPath := t.TempDir(), t.TempDir()
	for _, d := range []string{own, onPath} {
		if err := os.WriteFile(filepath.Join(d, "jailer"), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", onPath)
	if p, err := Lookup(own, "jailer"); err != nil || p != filepath.Join(own, "jailer") {
		t.Errorf("Lookup = %q, %v; want the bin dir's", p, err)
	}
	if p, err := Lookup(t.TempDir(), "jailer"); err != nil || p != filepath.Join(onPath, "jailer") {
		t.Errorf("Lookup = %q, %v; want PATH's", p, err)
	}
}
