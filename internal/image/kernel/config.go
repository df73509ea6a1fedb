package kernel

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path"
	"strings"
	"time"
)

// Config is a kernel build configuration (/boot/config-<release>): option name
// ("CONFIG_VIRTIO_MMIO") to value ("y", "m", a number or a string). Options that
// are "not set" are absent.
type Config map[string]string

// Option values that matter for drivers.
const (
	BuiltIn = "y"
	Module  = "m"
)

// ParseConfig reads a kernel .config.
func ParseConfig(r io.Reader) (Config, error) {
	c := Config{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue // comments, and "# CONFIG_X is not set"
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !strings.HasPrefix(k, "CONFIG_") {
			continue
		}
		c[k] = strings.Trim(v, `"`)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(c) == 0 {
		return nil, errors.New("not a kernel config: no CONFIG_ options")
	}
	return c, nil
}

// ConfigFromDeb reads /boot/config-* out of a kernel .deb without unpacking the
// rest: it comes before the kernel and the modules in Debian's packages, so
// only the start of the archive is decompressed.
func ConfigFromDeb(ctx context.Context, deb string) (Config, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	// dpkg-deb's decompressor child keeps stderr open after dpkg-deb is killed;
	// do not wait on it for long.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("dpkg-deb: %w", err)
	}
	cfg, found, rerr := func() (Config, bool, error) {
		tr := tar.NewReader(out)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				return nil, false, nil
			}
			if err != nil {
				return nil, false, err
			}
			if name := path.Clean(strings.TrimPrefix(h.Name, "./")); path.Dir(name) == "boot" && strings.HasPrefix(path.Base(name), "config-") {
				c, err := ParseConfig(tr)
				return c, true, err
			}
		}
	}()
	if found || rerr != nil {
		// Stop dpkg-deb: its exit is of no interest any more. Closing the pipe
		// ends its decompressor child too (SIGPIPE).
		out.Close()
		cancel()
	}
	werr := cmd.Wait()
	switch {
	case found && rerr == nil:
		return cfg, nil
	case rerr != nil:
		return nil, fmt.Errorf("%s: %w", path.Base(deb), rerr)
	case werr != nil:
		return nil, fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w: %s", path.Base(deb), werr, lastLines(stderr.Bytes(), 2))
	default:
		return nil, fmt.Errorf("%s has no boot/config-*", path.Base(deb))
	}
}
