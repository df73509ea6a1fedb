package kernel

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const sampleConfig = `#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_VIRTIO=m
CONFIG_VIRTIO_MMIO=m
# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set
CONFIG_SERIAL_8250=y
CONFIG_SERIAL_8250_NR_UARTS=32
CONFIG_LOCALVERSION="-cloud"
`

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig(strings.NewReader(sampleConfig))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"CONFIG_VIRTIO": "m", "CONFIG_VIRTIO_MMIO": "m", "CONFIG_SERIAL_8250": "y",
		"CONFIG_SERIAL_8250_NR_UARTS": "32", "CONFIG_LOCALVERSION": "-cloud"}
	if len(c) != len(want) {
		t.Errorf("got %v", c)
	}
	for k, v := range want {
		if c[k] != v {
			t.Errorf("%s = %q, want %q", k, c[k], v)
		}
	}
	if _, set := c["CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES"]; set {
		t.Error("an option that is not set is present")
	}
	if _, err := ParseConfig(strings.NewReader("hello\n")); err == nil {
		t.Error("a file without options parsed")
	}
}

// TestConfigFromDeb builds a small package shaped like Debian's kernel packages
// (boot/ first, then a large file the reader must not need).
func TestConfigFromDeb(t *testing.T) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb not installed")
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "pkg")
	for name, body := range map[string]string{
		"DEBIAN/control":          "Package: linux-image-test\nVersion: 1\nArchitecture: amd64\nMaintainer: t <t@t>\nDescription: t\n",
		"boot/config-6.1.0-test":  sampleConfig,
		"boot/vmlinuz-6.1.0-test": strings.Repeat("k", 1<<20),
	} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	deb := filepath.Join(dir, "k.deb")
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", root, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build: %v: %s", err, out)
	}
	c, err := ConfigFromDeb(context.Background(), deb)
	if err != nil {
		t.Fatal(err)
	}
	if c["CONFIG_VIRTIO_MMIO"] != Module {
		t.Errorf("config %v", c)
	}

	if err := os.Remove(filepath.Join(root, "boot", "config-6.1.0-test")); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", root, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb --build: %v: %s", err, out)
	}
	if _, err := ConfigFromDeb(context.Background(), deb); err == nil || !strings.Contains(err.Error(), "has no boot/config-*") {
		t.Errorf("package without a config: %v", err)
	}
}
