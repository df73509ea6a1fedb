package runtime

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/store"
	"github.com/mvm-dev/mvm/internal/vm"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

func needQEMU(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath(qemu.Binary); err != nil {
		t.Skip(qemu.Binary + " not installed")
	}
}

func templateSpec(name string) TemplateSpec {
	return TemplateSpec{Name: name, Image: image.DefaultName, CPUs: 1, MemoryMiB: 256, Network: vm.NetworkNone}
}

func putTemplate(t *testing.T, r *Runtime, tp store.Template) {
	t.Helper()
	if err := r.Store.Update(func(tx *store.Tx) error { return tx.PutTemplate(tp) }); err != nil {
		t.Fatal(err)
	}
}

// create stores auto as "" and the kernel as an absolute path.
func TestTemplateCreateNormalises(t *testing.T) {
	needQEMU(t)
	r := testRuntime(t)
	dir := t.TempDir()
	bzImage(t, dir, "6.6.7-custom")
	t.Chdir(dir)
	s := templateSpec("t1")
	s.Hypervisor, s.Kernel = vm.HypervisorAuto, "bzImage"
	tp, err := r.TemplateCreate(s)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := r.Template("t1")
	if err != nil {
		t.Fatal(err)
	}
	for _, got := range []store.Template{tp, stored} {
		if got.Hypervisor != "" || got.Kernel != filepath.Join(dir, "bzImage") {
			t.Errorf("stored hypervisor %q kernel %q", got.Hypervisor, got.Kernel)
		}
	}
}

// Settings up would refuse are refused at create, and nothing is recorded.
func TestTemplateCreateRefusals(t *testing.T) {
	needQEMU(t)
	r := testRuntime(t)
	// A PATH with QEMU and no firecracker, as on the development hosts.
	bin := t.TempDir()
	if err := os.Symlink(mustLookPath(t, qemu.Binary), filepath.Join(bin, qemu.Binary)); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin)
	for _, tc := range []struct {
		name string
		edit func(*TemplateSpec)
		want string
	}{
		{"firecracker missing", func(s *TemplateSpec) { s.Hypervisor = vm.HypervisorFirecracker }, "--hypervisor firecracker:"},
		{"jailer without firecracker", func(s *TemplateSpec) { s.Jailer = true }, "--jailer is Firecracker's"},
		{"kernel missing", func(s *TemplateSpec) { s.Kernel = "/nonexistent/vmlinux" }, "/nonexistent/vmlinux"},
		{"unknown hypervisor", func(s *TemplateSpec) { s.Hypervisor = "xen" }, "--hypervisor \"xen\" is unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := templateSpec("bad")
			tc.edit(&s)
			if _, err := r.TemplateCreate(s); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("TemplateCreate: %v, want %q", err, tc.want)
			}
		})
	}
	if tps, err := r.Templates(); err != nil || len(tps) != 0 {
		t.Errorf("templates after refusals: %v %v", tps, err)
	}
}

func mustLookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// An unbuilt template's VMs boot with its settings, except where up names others.
func TestUnbuiltTemplateSettings(t *testing.T) {
	r := testRuntime(t)
	putTemplate(t, r, store.Template{Name: "fcj", Image: image.DefaultName, CPUs: 1, MemoryMiB: 256, Network: vm.NetworkNone,
		Hypervisor: vm.HypervisorFirecracker, Kernel: "/k/vmlinux", Jailer: true})
	putTemplate(t, r, store.Template{Name: "plain", Image: image.DefaultName, CPUs: 1, MemoryMiB: 256, Network: vm.NetworkNone})
	for _, tc := range []struct {
		template string
		given    vm.Spec
		want     vm.Spec // Hypervisor, Kernel, Jailer
	}{
		{"fcj", vm.Spec{}, vm.Spec{Hypervisor: vm.HypervisorFirecracker, Kernel: "/k/vmlinux", Jailer: true}},
		{"fcj", vm.Spec{Hypervisor: vm.HypervisorAuto}, vm.Spec{Hypervisor: vm.HypervisorFirecracker, Kernel: "/k/vmlinux", Jailer: true}},
		{"fcj", vm.Spec{Hypervisor: vm.HypervisorQEMU}, vm.Spec{Hypervisor: vm.HypervisorQEMU, Kernel: "/k/vmlinux"}},
		{"fcj", vm.Spec{Kernel: "/other"}, vm.Spec{Hypervisor: vm.HypervisorFirecracker, Kernel: "/other", Jailer: true}},
		{"plain", vm.Spec{}, vm.Spec{Hypervisor: vm.HypervisorAuto}},
		{"plain", vm.Spec{Hypervisor: vm.HypervisorQEMU}, vm.Spec{Hypervisor: vm.HypervisorQEMU}},
	} {
		o := UpOptions{Spec: tc.given, Template: tc.template}
		src, err := r.resolveRestore(context.Background(), &o)
		if err != nil || src != nil {
			t.Errorf("%s %+v: %v %v", tc.template, tc.given, src, err)
			continue
		}
		got := vm.Spec{Hypervisor: o.Spec.Hypervisor, Kernel: o.Spec.Kernel, Jailer: o.Spec.Jailer}
		if got.Hypervisor != tc.want.Hypervisor || got.Kernel != tc.want.Kernel || got.Jailer != tc.want.Jailer {
			t.Errorf("%s with %+v: %+v, want %+v", tc.template, tc.given, got, tc.want)
		}
	}
	// What fails because of the template's settings says so.
	o := UpOptions{Spec: vm.Spec{Kernel: "/nonexistent/vmlinux", Hypervisor: vm.HypervisorQEMU}, Template: "plain"}
	if err := r.Prepare(context.Background(), &o); err == nil || !strings.HasPrefix(err.Error(), "template plain (not built yet") {
		t.Errorf("Prepare: %v", err)
	}
}

// edit drops the snapshot only when it no longer matches.
func TestTemplateEditKeepsMatchingSnapshot(t *testing.T) {
	needQEMU(t)
	r := testRuntime(t)
	snap := &store.Snapshot{Name: "t1", ID: "0123456789ab", Backend: vm.HypervisorQEMU}
	putTemplate(t, r, store.Template{Name: "t1", Image: image.DefaultName, CPUs: 1, MemoryMiB: 256, Network: vm.NetworkNone, Snapshot: snap})
	ctx := context.Background()
	for _, tc := range []struct {
		what    string
		edit    func(*TemplateSpec)
		dropped bool
	}{
		{"the hypervisor it was taken on", func(s *TemplateSpec) { s.Hypervisor = vm.HypervisorQEMU }, false},
		{"back to auto", func(s *TemplateSpec) { s.Hypervisor = "" }, false},
		{"the health command", func(s *TemplateSpec) { s.Health = "true" }, false},
		{"the CPUs", func(s *TemplateSpec) { s.CPUs = 2 }, true},
	} {
		cur, err := r.Template("t1")
		if err != nil {
			t.Fatal(err)
		}
		s := TemplateSpecOf(cur)
		tc.edit(&s)
		tp, dropped, err := r.TemplateEdit(ctx, s)
		if err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		if dropped != tc.dropped || (tp.Snapshot == nil) != tc.dropped {
			t.Errorf("%s: dropped %v (snapshot %v), want %v", tc.what, dropped, tp.Snapshot, tc.dropped)
		}
	}
}

// A recorded jail location is used only when it is the VM's own under the root.
func TestCleanupRecordedJailRefuses(t *testing.T) {
	r := testRuntime(t)
	base := r.Root.Jail()
	decoy := filepath.Join(t.TempDir(), "decoy")
	for _, d := range []string{base, filepath.Join(decoy, "root")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	rec := vm.Record{ID: "0123456789ab"}
	name := rec.JailName()
	good := filepath.Join(base, "firecracker", name)
	goodCg := filepath.Join("/sys/fs/cgroup", "firecracker", name)
	for _, tc := range []struct{ what, dir, cg string }{
		{"outside the root", filepath.Join(filepath.Dir(decoy), name), goodCg},
		{"not clean", filepath.Join(base, "firecracker", "..", "firecracker", name) + "/", goodCg},
		{"with dot-dot", base + "/x/../firecracker/" + name, goodCg},
		{"another VM's", filepath.Join(base, "firecracker", "mvm-ba9876543210"), goodCg},
		{"too deep", filepath.Join(base, "a", "firecracker", name), goodCg},
		{"cgroup of another VM", good, filepath.Join("/sys/fs/cgroup", "firecracker", "mvm-ba9876543210")},
		{"cgroup under another parent", good, filepath.Join("/sys/fs/cgroup", "system.slice", name)},
		{"cgroup not clean", good, "/sys/fs/cgroup/firecracker/../firecracker/" + name},
	} {
		rec.JailDir, rec.JailCgroup = tc.dir, tc.cg
		if err := r.cleanupRecordedJail(context.Background(), rec); err == nil || !strings.Contains(err.Error(), "left alone") {
			t.Errorf("%s (%s, %s): %v", tc.what, tc.dir, tc.cg, err)
		}
	}
	if _, err := os.Stat(filepath.Join(decoy, "root")); err != nil {
		t.Errorf("the decoy went: %v", err)
	}
}
