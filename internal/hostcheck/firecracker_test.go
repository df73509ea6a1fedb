package hostcheck

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

func byName(cs []Check) map[string]Check {
	m := map[string]Check{}
	for _, c := range cs {
		m[c.Name] = c
	}
	return m
}

func fakeProgram(t *testing.T, dir, name, version string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	body := "#!/bin/sh\necho '" + version + "'\n"
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
}

// writeImage stores a default image with the given manifest fields.
func writeImage(t *testing.T, root layout.Root, manifest string) {
	t.Helper()
	digest := strings.Repeat("cd", 32)
	dir := filepath.Join(root.Images(), "sha256-"+digest)
	if err := os.MkdirAll(filepath.Join(root.Images(), "refs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m := `{"digest": "` + digest + `", "kernel_release": "6.1.0-48-cloud-amd64", "kernel_format": "elf-pvh", ` + manifest + `}`
	if err := os.WriteFile(filepath.Join(dir, image.FileManifest), []byte(m), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root.Images(), "refs", image.DefaultName), []byte(digest+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestFirecrackerChecks(t *testing.T) {
	root := layout.Root{Dir: t.TempDir()}
	t.Setenv("PATH", t.TempDir())
	ctx := context.Background()
	kvm := qemu.Accel{Name: "kvm"}

	cs := byName(firecrackerChecks(ctx, root, qemu.Accel{Name: "tcg", Reason: "no vmx/svm"}))
	for _, n := range []string{"firecracker", "jailer", "firecracker-kvm", "firecracker-kernel"} {
		if cs[n].Status != Fail || cs[n].Fix == "" {
			t.Errorf("%s: %+v, want a failure with a fix", n, cs[n])
		}
	}
	if !strings.Contains(cs["firecracker"].Fix, "mvmctl bootstrap --firecracker") {
		t.Errorf("fix %q", cs["firecracker"].Fix)
	}

	fakeProgram(t, root.Bin(), "firecracker", "Firecracker v1.13.1")
	fakeProgram(t, root.Bin(), "jailer", "Jailer v1.13.1")
	writeImage(t, root, `"backends": ["qemu", "firecracker"]`)
	cs = byName(firecrackerChecks(ctx, root, kvm))
	for _, n := range []string{"firecracker", "jailer", "firecracker-kvm", "firecracker-kernel"} {
		if cs[n].Status != OK {
			t.Errorf("%s: %+v, want ok", n, cs[n])
		}
	}

	fakeProgram(t, root.Bin(), "jailer", "Jailer v1.12.0")
	writeImage(t, root, `"backends": ["qemu"], "unsupported_backends": {"firecracker": "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set"}, "fit_rules": 2`)
	cs = byName(firecrackerChecks(ctx, root, kvm))
	if c := cs["jailer"]; c.Status != Warn || !strings.Contains(c.Detail, "mvm drives Firecracker 1.13.x") {
		t.Errorf("old jailer: %+v", c)
	}
	if c := cs["firecracker-kernel"]; c.Status != Fail || !strings.Contains(c.Detail, "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set") {
		t.Errorf("unfit kernel: %+v", c)
	}

	writeImage(t, root, `"backends": ["qemu"]`) // a manifest from before the check
	if c := byName(firecrackerChecks(ctx, root, kvm))["firecracker-kernel"]; c.Status != Warn || !strings.Contains(c.Fix, "mvmctl bootstrap") {
		t.Errorf("unrecorded fit: %+v", c)
	}
}

// Firecracker's checks never fail doctor unless asked for.
func TestDoctorFirecrackerOptional(t *testing.T) {
	root := layout.Root{Dir: t.TempDir()}
	t.Setenv("PATH", t.TempDir())
	for _, asked := range []bool{false, true} {
		cs := Doctor(context.Background(), root, DoctorOptions{Firecracker: asked})
		fc := byName(cs)["firecracker"]
		if fc.Group != GroupFirecracker {
			t.Errorf("group %q", fc.Group)
		}
		want := Warn
		if asked {
			want = Fail
		}
		if fc.Status != want {
			t.Errorf("asked=%v: firecracker check %s, want %s", asked, fc.Status, want)
		}
		for _, c := range cs {
			if c.Group != GroupHost && c.Group != GroupFirecracker {
				t.Errorf("%s has group %q", c.Name, c.Group)
			}
			if !asked && c.Group == GroupFirecracker && c.Status == Fail {
				t.Errorf("%s fails though Firecracker was not asked for", c.Name)
			}
		}
	}
}
