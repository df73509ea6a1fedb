package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/image/kernel"
)

// TestImageReproducibleAndModules builds the default image twice from the same inputs
// into two fresh stores: the files must be identical byte for byte. It also checks the
// initramfs module set against depmod's view of the same kernel when kmod is present.
func TestImageReproducibleAndModules(t *testing.T) {
	t.Parallel()
	requireSuite(t)
	pkg, ok := kernel.Cached(filepath.Join(suite.sharedRoot, "cache", "debs"))
	if !ok {
		t.Fatal("no cached kernel package after bootstrap")
	}
	pkg, err := kernel.Fetch(context.Background(), filepath.Dir(pkg.Deb), false)
	if err != nil {
		t.Fatal(err)
	}
	var imgs []image.Image
	for i := 0; i < 2; i++ {
		st := image.Store{Dir: t.TempDir()}
		img, built, err := st.Build(context.Background(), image.BuildOptions{
			Kernel: pkg, Agent: filepath.Join(suite.bin, "mvm-agent"), Busybox: "/bin/busybox"})
		if err != nil || !built {
			t.Fatalf("build %d: built=%v err=%v", i, built, err)
		}
		imgs = append(imgs, img)
	}
	if imgs[0].Digest != imgs[1].Digest {
		t.Fatalf("digests differ: %s %s", imgs[0].Digest, imgs[1].Digest)
	}
	for _, f := range []string{image.FileKernel, image.FileInitrd, image.FileRootfs} {
		a, _ := os.ReadFile(imgs[0].Path(f))
		b, _ := os.ReadFile(imgs[1].Path(f))
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("%s differs between two builds of the same inputs", f)
		}
	}
	want := []string{"virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "virtio_rng", "failover", "net_failover"}
	mods := strings.Join(imgs[0].Modules, " ")
	for _, m := range want {
		if !strings.Contains(mods, m) {
			t.Errorf("initramfs lacks %s: %s", m, mods)
		}
	}
	// Cross-check with depmod's modules.dep when kmod is installed.
	depmod, err := exec.LookPath("depmod")
	if err != nil {
		t.Logf("depmod not installed: skipping the modules.dep cross-check")
		return
	}
	dir := t.TempDir()
	un, err := kernel.Unpack(context.Background(), pkg.Deb, dir)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(depmod, "-b", dir, un.Release).CombinedOutput(); err != nil {
		t.Fatalf("depmod: %v %s", err, out)
	}
	dep, err := os.ReadFile(filepath.Join(un.ModulesDir, "modules.dep"))
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range imgs[0].Modules {
		pos[m] = i
	}
	for _, line := range strings.Split(string(dep), "\n") {
		mod, deps, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		name := strings.ReplaceAll(strings.TrimSuffix(filepath.Base(mod), ".ko"), "-", "_")
		p, in := pos[name]
		if !in {
			continue
		}
		for _, d := range strings.Fields(deps) {
			dn := strings.ReplaceAll(strings.TrimSuffix(filepath.Base(d), ".ko"), "-", "_")
			dp, ok := pos[dn]
			if !ok {
				t.Errorf("%s needs %s (modules.dep), which the initramfs lacks", name, dn)
			} else if dp > p {
				t.Errorf("%s is loaded before its dependency %s", name, dn)
			}
		}
	}
}
