package guest

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-dev/mvm/internal/kmod"
)

// The initramfs's modules are loaded into the kernel they were built for, and
// skipped, with one log line, under another (up --kernel).
func TestLoadModulesKernelRelease(t *testing.T) {
	m := kmod.Manifest{Kernel: "6.1.0-48-cloud-amd64", Modules: []kmod.Module{
		{Name: "virtio", File: "/lib/modules/virtio.ko", Always: true},
		{Name: "virtio_mmio", File: "/lib/modules/virtio_mmio.ko", Depends: []string{"virtio"}, Always: true},
	}}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(t.TempDir(), "mvm-modules.json")
	if err := os.WriteFile(manifest, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		release string
		loads   []string
		logged  string
	}{
		{release: "6.1.0-48-cloud-amd64", loads: []string{"/lib/modules/virtio.ko", "/lib/modules/virtio_mmio.ko"}},
		{release: "", loads: []string{"/lib/modules/virtio.ko", "/lib/modules/virtio_mmio.ko"}}, // unknown: as before
		{release: "6.6.7-fc-ci", logged: "they are for kernel 6.1.0-48-cloud-amd64, not 6.6.7-fc-ci; this kernel must have its virtio drivers built in"},
	}
	for _, tc := range cases {
		t.Run(tc.release, func(t *testing.T) {
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			var loaded []string
			err := loadModulesFrom(log, manifest, tc.release, func(p string) error {
				loaded = append(loaded, p)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(loaded, " ") != strings.Join(tc.loads, " ") {
				t.Errorf("loaded %v, want %v", loaded, tc.loads)
			}
			if tc.logged != "" {
				if lines := strings.Count(logs.String(), "\n"); lines != 1 || !strings.Contains(logs.String(), tc.logged) {
					t.Errorf("%d log lines %q, want one containing %q", lines, logs.String(), tc.logged)
				}
			}
		})
	}
}
