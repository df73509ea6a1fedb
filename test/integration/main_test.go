// Package integration boots real microVMs under QEMU through the mvmctl binary, the
// way a user does. Each test gets its own mvm root and its own network namespace, so
// tests run side by side and send no traffic beyond the namespaces they made.
//
// Requirements: root, and what `mvmctl bootstrap` installs. Without them every test
// skips with the reason, unless MVM_REQUIRE_INTEGRATION=1 (set by `make test`, so CI
// fails instead of skipping).
package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// suite is what TestMain prepared for every test.
type suiteEnv struct {
	bin        string // directory holding mvmctl and mvm-agent
	sharedRoot string // holds the kernel cache and the default image
	skip       string // why integration tests cannot run here
}

var suite suiteEnv

func TestMain(m *testing.M) {
	suite = prepare()
	code := m.Run()
	if suite.bin != "" && os.Getenv("MVM_TEST_BIN") == "" {
		os.RemoveAll(suite.bin)
	}
	if testDoubles.dir != "" {
		os.RemoveAll(testDoubles.dir)
	}
	os.Exit(code)
}

func prepare() suiteEnv {
	var s suiteEnv
	if os.Geteuid() != 0 {
		s.skip = "integration tests need root (bridges, TAPs, network namespaces)"
		return s
	}
	for _, tool := range []string{"ip", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			s.skip = tool + " not found (install iproute2 / util-linux)"
			return s
		}
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		s.skip = err.Error()
		return s
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// MVM_TEST_BIN points at binaries already built (scripts/test.sh); otherwise build.
	if dir := os.Getenv("MVM_TEST_BIN"); dir != "" {
		s.bin = dir
	} else if s.bin, err = buildBinaries(ctx, repo); err != nil {
		s.skip = err.Error()
		return s
	}
	s.sharedRoot = os.Getenv("MVM_TEST_ROOT")
	if s.sharedRoot == "" {
		s.sharedRoot = "/var/tmp/mvm-it"
	}
	// The only step that needs the package registry (once): fetch the kernel, build the image.
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, "mvmctl"), "--root", s.sharedRoot, "bootstrap")
	if out, err := cmd.CombinedOutput(); err != nil {
		s.skip = fmt.Sprintf("mvmctl bootstrap failed: %v: %s", err, out)
		return s
	}
	return s
}

func requireSuite(t *testing.T) {
	t.Helper()
	if suite.skip == "" {
		return
	}
	if os.Getenv("MVM_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("integration prerequisites missing: %s", suite.skip)
	}
	t.Skipf("skipping real-VM test: %s", suite.skip)
}

func hostCPUs() int { return runtime.NumCPU() }

func buildBinaries(ctx context.Context, repo string) (string, error) {
	bin, err := os.MkdirTemp("", "mvm-it-bin-")
	if err != nil {
		return "", err
	}
	for _, b := range []string{"mvm-agent", "mvmctl"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(bin, b), "./cmd/"+b)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("build %s: %v: %s", b, err, out)
		}
	}
	return bin, nil
}
