package runtime

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/client"
	"github.com/mvm-dev/mvm/internal/store"
	"github.com/mvm-dev/mvm/internal/supervisor"
	"github.com/mvm-dev/mvm/internal/vm"
)

// TemplateSpec is what a template holds besides its snapshot.
type TemplateSpec struct {
	Name        string
	Image       string
	CPUs        int
	MemoryMiB   int64
	DataDiskMiB int64
	Network     string
	Health      string
	Hypervisor  string // empty or auto: as `up` picks
	Kernel      string // empty: the image's
	Jailer      bool
}

// vmSpec is the spec of the VMs the template starts, before a VM's own name.
func (t TemplateSpec) vmSpec() vm.Spec {
	return vm.Spec{Name: t.Name, Image: t.Image, CPUs: t.CPUs, MemoryMiB: t.MemoryMiB, DataDiskMiB: t.DataDiskMiB,
		Network: t.Network, Hypervisor: cmp.Or(t.Hypervisor, vm.HypervisorAuto), Kernel: t.Kernel, Jailer: t.Jailer}
}

// validate checks the template by the rules of the VMs it will start, as `up` does
// (including whether its hypervisor is usable here and its kernel fits it), and
// returns it with its kernel's path made absolute.
func (t TemplateSpec) validate(r *Runtime) (TemplateSpec, error) {
	if err := vm.ValidateName(t.Name); err != nil {
		return t, fmt.Errorf("template name: %w", err)
	}
	p, err := r.plan(t.vmSpec(), nil)
	if err != nil {
		return t, err
	}
	if p.kernel != nil {
		t.Kernel = p.kernel.path // build and up run elsewhere: an absolute path
	}
	if t.Hypervisor == vm.HypervisorAuto {
		t.Hypervisor = ""
	}
	return t, nil
}

// TemplateSpecOf is a template's settings, as create and edit take them.
func TemplateSpecOf(tp store.Template) TemplateSpec {
	return TemplateSpec{Name: tp.Name, Image: tp.Image, CPUs: tp.CPUs, MemoryMiB: tp.MemoryMiB, DataDiskMiB: tp.DataDiskMiB,
		Network: tp.Network, Health: tp.Health, Hypervisor: tp.Hypervisor, Kernel: tp.Kernel, Jailer: tp.Jailer}
}

// withSpec returns tp with the settings of t.
func withSpec(tp store.Template, t TemplateSpec) store.Template {
	tp.Name, tp.Image, tp.CPUs, tp.MemoryMiB, tp.DataDiskMiB, tp.Network, tp.Health = t.Name, t.Image, t.CPUs, t.MemoryMiB, t.DataDiskMiB, t.Network, t.Health
	tp.Hypervisor, tp.Kernel, tp.Jailer = t.Hypervisor, t.Kernel, t.Jailer
	return tp
}

// TemplateCreate records a template. It has no snapshot until `template build`.
func (r *Runtime) TemplateCreate(t TemplateSpec) (store.Template, error) {
	t, err := t.validate(r)
	if err != nil {
		return store.Template{}, err
	}
	tp := withSpec(store.Template{CreatedAt: time.Now().UTC()}, t)
	err = r.Store.Update(func(tx *store.Tx) error {
		if _, err := tx.Template(t.Name); err == nil {
			return fmt.Errorf("a template named %q exists: see `mvmctl template info %s`, or remove it with `mvmctl template rm %s`", t.Name, t.Name, t.Name)
		}
		return tx.PutTemplate(tp)
	})
	return tp, err
}

// Template returns a template.
func (r *Runtime) Template(name string) (store.Template, error) {
	var tp store.Template
	err := r.Store.View(func(tx *store.Tx) error {
		var err error
		tp, err = tx.Template(name)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return tp, fmt.Errorf("no template named %q: see `mvmctl template ls`", name)
	}
	return tp, err
}

// Templates lists the templates.
func (r *Runtime) Templates() ([]store.Template, error) {
	var out []store.Template
	err := r.Store.View(func(tx *store.Tx) error {
		var err error
		out, err = tx.Templates()
		return err
	})
	return out, err
}

// TemplateEdit changes a template's settings. Its snapshot no longer matches them and
// is dropped: `template build` makes a new one.
func (r *Runtime) TemplateEdit(ctx context.Context, t TemplateSpec) (store.Template, bool, error) {
	t, err := t.validate(r)
	if err != nil {
		return store.Template{}, false, err
	}
	old, err := r.Template(t.Name)
	if err != nil {
		return old, false, err
	}
	tp := withSpec(old, t)
	// The snapshot holds the hardware, the running kernel and the backend (jailed
	// or not); the network's name and the health command are outside it.
	changed := tp.Image != old.Image || tp.CPUs != old.CPUs || tp.MemoryMiB != old.MemoryMiB ||
		tp.DataDiskMiB != old.DataDiskMiB || (tp.Network == vm.NetworkNone) != (old.Network == vm.NetworkNone) ||
		tp.Kernel != old.Kernel || tp.Jailer != old.Jailer ||
		old.Snapshot != nil && tp.Hypervisor != "" && tp.Hypervisor != old.Snapshot.Backend
	if !changed || old.Snapshot == nil {
		return tp, false, r.Store.Update(func(tx *store.Tx) error { return tx.PutTemplate(tp) })
	}
	tp.Snapshot, tp.BuiltAt = nil, time.Time{}
	err = r.removeSnapshotFiles(ctx, old.Snapshot.ID, func(tx *store.Tx) error { return tx.PutTemplate(tp) })
	return tp, true, err
}

// TemplateRemove deletes a template and its snapshot. VMs started from it go on.
func (r *Runtime) TemplateRemove(ctx context.Context, name string) error {
	tp, err := r.Template(name)
	if err != nil {
		return err
	}
	forget := func(tx *store.Tx) error { return tx.DeleteTemplate(name) }
	if tp.Snapshot == nil {
		return r.Store.Update(forget)
	}
	return r.removeSnapshotFiles(ctx, tp.Snapshot.ID, forget)
}

// TemplateBuilt reports a build.
type TemplateBuilt struct {
	Template store.Template
	BootTook time.Duration
	Result   supervisor.SnapshotResult
}

// TemplateBuild boots a VM from the template's image and settings, waits for its
// agent and, when the template has one, its health command, snapshots it and
// removes it. The new snapshot replaces the old one in one store transaction, so
// `up --template` always finds a whole snapshot; VMs started from the old one are
// not affected.
func (r *Runtime) TemplateBuild(ctx context.Context, name string, progress func(string)) (*TemplateBuilt, error) {
	tp, err := r.Template(name)
	if err != nil {
		return nil, err
	}
	buildName := "build-" + name
	if len(buildName) > 50 {
		buildName = buildName[:50]
	}
	buildName += "-" + newID()[:6]
	spec := TemplateSpecOf(tp).vmSpec()
	spec.Name, spec.Egress = buildName, vm.Egress{Mode: vm.EgressAllow}
	progress(fmt.Sprintf("booting %s from image %s", buildName, tp.Image))
	st, err := r.Up(ctx, UpOptions{Spec: spec})
	if err != nil {
		return nil, fmt.Errorf("template %s: boot: %w", name, err)
	}
	built := &TemplateBuilt{BootTook: st.Ready}
	defer func() {
		// The build VM's state is in the snapshot (or the build failed): it goes at once.
		if err := r.Down(context.WithoutCancel(ctx), buildName, 0); err != nil {
			r.Log.Warn("remove the template's build VM", "vm", buildName, "err", err)
		}
	}()
	if tp.Health != "" {
		progress("waiting for the health command to succeed: " + tp.Health)
		if err := r.waitHealthy(ctx, buildName, tp.Health, 2*time.Minute); err != nil {
			return nil, fmt.Errorf("template %s: %w", name, err)
		}
	}
	progress("snapshotting")
	id := newID()
	res, err := r.saveInto(ctx, st.Record, id, name, supervisor.KindTemplate)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	snap := snapshotRecord(name, id, st.Record, res)
	snap.Network = tp.Network
	var old *store.Snapshot
	err = r.Store.Update(func(tx *store.Tx) error {
		cur, err := tx.Template(name)
		if err != nil {
			return fmt.Errorf("template %s was removed during the build", name)
		}
		old = cur.Snapshot
		cur.Snapshot, cur.BuiltAt = &snap, time.Now().UTC()
		tp = cur
		return tx.PutTemplate(cur)
	})
	if err != nil {
		_ = r.removeSnapshotFiles(ctx, id, func(*store.Tx) error { return nil })
		return nil, err
	}
	if old != nil {
		if err := r.removeSnapshotFiles(ctx, old.ID, func(*store.Tx) error { return nil }); err != nil {
			r.Log.Warn("remove the template's previous snapshot", "err", err)
		}
	}
	built.Template, built.Result = tp, res
	return built, nil
}

// waitHealthy runs cmd (through /bin/sh -c) in the VM until it exits 0.
func (r *Runtime) waitHealthy(ctx context.Context, name, cmd string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		var out bytes.Buffer
		ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
		exit, err := r.Exec(ectx, name, client.ExecOptions{Argv: []string{"/bin/sh", "-c", cmd}, Stdout: &out, Stderr: &out})
		cancel()
		if err == nil && exit.Code == 0 {
			return nil
		}
		last = fmt.Sprintf("exit %d: %s", exit.Code, bytes.TrimSpace(out.Bytes()))
		if err != nil {
			last = err.Error()
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("health command %q did not succeed within %s (last: %s)", cmd, timeout, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
