package cli

import (
	"cmp"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/runtime"
	"github.com/mvm-dev/mvm/internal/store"
	"github.com/mvm-dev/mvm/internal/ui"
	"github.com/mvm-dev/mvm/internal/vm"
)

// templateFlags are the settings create and edit share.
type templateFlags struct {
	image, memory, dataDisk, network, health, hypervisor, kernel string
	cpus                                                         int
	jailer                                                       bool
}

func (f *templateFlags) register(c *cobra.Command, defaults bool) {
	fl := c.Flags()
	img, mem, net, cpus := image.DefaultName, "512M", vm.NetworkDefault, 1
	if !defaults {
		img, mem, net, cpus = "", "", "", 0
	}
	fl.StringVar(&f.image, "image", img, "image to boot")
	fl.IntVar(&f.cpus, "cpus", cpus, "virtual CPUs")
	fl.StringVar(&f.memory, "memory", mem, "guest memory, e.g. 256M or 1G")
	fl.StringVar(&f.dataDisk, "data-disk", "", "data drive size (vdd), e.g. 64M; 0 for none")
	fl.StringVar(&f.network, "network", net, "network the VMs join by default (none: no NIC)")
	fl.StringVar(&f.health, "health", "", "shell command that must succeed in the VM before `template build` snapshots it")
	hv := vm.HypervisorAuto
	if !defaults {
		hv = ""
	}
	fl.StringVar(&f.hypervisor, "hypervisor", hv, "hypervisor the template's VMs boot on: auto, qemu or firecracker (as `up --hypervisor`)")
	fl.StringVar(&f.kernel, "kernel", "", "kernel the template's VMs boot (as `up --kernel`; default: the image's)")
	fl.BoolVar(&f.jailer, "jailer", false, "run the template's VMs under Firecracker's jailer (as `up --jailer`)")
}

// spec applies the flags that were given (edit) or all of them (create) to t.
func (f *templateFlags) spec(c *cobra.Command, t runtime.TemplateSpec) (runtime.TemplateSpec, error) {
	set := func(name string) bool { return c.Flags().Changed(name) || c.Name() == "create" }
	var err error
	if set("image") {
		t.Image = f.image
	}
	if set("cpus") {
		t.CPUs = f.cpus
	}
	if set("memory") {
		if t.MemoryMiB, err = vm.ParseMiB("--memory", f.memory, vm.MinMemoryMiB); err != nil {
			return t, err
		}
	}
	if set("data-disk") {
		t.DataDiskMiB = 0
		if f.dataDisk != "" && f.dataDisk != "0" {
			if t.DataDiskMiB, err = vm.ParseMiB("--data-disk", f.dataDisk, vm.MinDataDiskMiB); err != nil {
				return t, err
			}
		}
	}
	if set("network") {
		t.Network = f.network
	}
	if set("health") {
		t.Health = f.health
	}
	if set("hypervisor") {
		t.Hypervisor = f.hypervisor
	}
	if set("kernel") {
		t.Kernel = f.kernel
	}
	if set("jailer") {
		t.Jailer = f.jailer
	}
	return t, nil
}

// templateView is the scriptable shape of a template.
type templateView struct {
	Name        string        `json:"name"`
	Image       string        `json:"image"`
	CPUs        int           `json:"cpus"`
	MemoryMiB   int64         `json:"memory_mib"`
	DataDiskMiB int64         `json:"data_disk_mib"`
	Network     string        `json:"network"`
	Health      string        `json:"health"`
	Hypervisor  string        `json:"hypervisor"`
	Kernel      string        `json:"kernel"`
	Jailer      bool          `json:"jailer"`
	CreatedAt   time.Time     `json:"created_at"`
	Built       bool          `json:"built"`
	BuiltAt     *time.Time    `json:"built_at"`
	Snapshot    *snapshotView `json:"snapshot"`
}

func templateViewOf(t store.Template) templateView {
	v := templateView{Name: t.Name, Image: t.Image, CPUs: t.CPUs, MemoryMiB: t.MemoryMiB, DataDiskMiB: t.DataDiskMiB,
		Network: t.Network, Health: t.Health, Hypervisor: cmp.Or(t.Hypervisor, vm.HypervisorAuto), Kernel: t.Kernel, Jailer: t.Jailer,
		CreatedAt: t.CreatedAt, Built: t.Snapshot != nil, BuiltAt: timePtr(t.BuiltAt)}
	if t.Snapshot != nil {
		s := snapshotViewOf(*t.Snapshot)
		v.Snapshot = &s
	}
	return v
}

func newTemplateCmd(a *app) *cobra.Command {
	c := &cobra.Command{Use: "template", Short: "Templates: an image with resources and a snapshot new VMs start from (up --template)"}

	var cf templateFlags
	create := &cobra.Command{
		Use:   "create NAME [--image IMG] [--cpus N] [--memory SIZE] [--data-disk SIZE] [--network NET] [--health CMD] [--hypervisor H] [--kernel PATH] [--jailer]",
		Short: "Define a template (then `template build` snapshots it)",
		Example: `  mvmctl template create api --image default --cpus 1 --memory 256M --data-disk 64M
  mvmctl template build api
  mvmctl up -d --template api --name a1`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := cf.spec(cmd, runtime.TemplateSpec{Name: args[0]})
			if err != nil {
				return err
			}
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			if _, err := rt.TemplateCreate(t); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s: created; `mvmctl template build %s` snapshots it (until then `up --template` cold-boots it)\n", t.Name, t.Name)
			return nil
		},
	}
	cf.register(create, true)

	build := &cobra.Command{
		Use:   "build NAME",
		Short: "Boot the template's VM, wait for its agent and health command, snapshot it (replacing the old snapshot)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			p := ui.NewProgress(os.Stderr, false)
			begin := time.Now()
			b, err := rt.TemplateBuild(cmd.Context(), args[0], p.Step)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s: built in %.2fs (boot %.2fs, snapshot %s, VM paused %.0f ms)\n", args[0], time.Since(begin).Seconds(),
				b.BootTook.Seconds(), vm.FormatBytes(b.Result.SizeBytes), b.Result.PausedMs)
			return nil
		},
	}

	ls := newListCmd(a, listSpec[store.Template]{
		short:    "List templates",
		jsonHelp: "print a JSON array (snake_case keys, stable for scripts)",
		list:     (*runtime.Runtime).Templates,
		view:     func(t store.Template) any { return templateViewOf(t) },
		header:   []string{"NAME", "IMAGE", "CPUS", "MEMORY", "DATA", "NETWORK", "BUILT", "SNAPSHOT"},
		row: func(tp store.Template) []string {
			built, size := "no", "-"
			if tp.Snapshot != nil {
				built, size = ui.Duration(time.Since(tp.BuiltAt))+" ago", vm.FormatBytes(tp.Snapshot.SizeBytes)
			}
			return []string{tp.Name, tp.Image, fmt.Sprint(tp.CPUs), vm.FormatMiB(tp.MemoryMiB), orDash(dataDisk(tp.DataDiskMiB)), tp.Network, built, size}
		},
	})

	var infoJSON bool
	info := &cobra.Command{
		Use:   "info NAME",
		Short: "Show a template and its snapshot",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			tp, err := rt.Template(args[0])
			if err != nil {
				return err
			}
			if infoJSON {
				return ui.JSON(a.stdout, templateViewOf(tp))
			}
			fmt.Fprintf(a.stdout, "Name:       %s\nImage:      %s\nCPUs:       %d\nMemory:     %s\nData disk:  %s\nNetwork:    %s\nHealth:     %s\nHypervisor: %s\nKernel:     %s\n",
				tp.Name, tp.Image, tp.CPUs, vm.FormatMiB(tp.MemoryMiB), orDash(dataDisk(tp.DataDiskMiB)), tp.Network, orDash(tp.Health),
				hypervisorOf(tp), cmp.Or(tp.Kernel, "the image's"))
			if tp.Snapshot == nil {
				fmt.Fprintf(a.stdout, "Snapshot:   none (`mvmctl template build %s` makes one)\n", tp.Name)
				return nil
			}
			s := tp.Snapshot
			fmt.Fprintf(a.stdout, "Snapshot:   built %s, %s on disk, %s %s (%s), image %.19s\n", tp.BuiltAt.Local().Format("2006-01-02 15:04:05"),
				vm.FormatBytes(s.SizeBytes), s.Backend, s.BackendVersion, s.Accel, s.ImageDigest)
			return nil
		},
	}
	info.Flags().BoolVar(&infoJSON, "json", false, "print as JSON")

	var ef templateFlags
	edit := &cobra.Command{
		Use:   "edit NAME [--image IMG] [--cpus N] [--memory SIZE] [--data-disk SIZE] [--network NET] [--health CMD] [--hypervisor H] [--kernel PATH] [--jailer]",
		Short: "Change a template's settings (a snapshot that no longer matches them is dropped)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			cur, err := rt.Template(args[0])
			if err != nil {
				return err
			}
			t, err := ef.spec(cmd, runtime.TemplateSpecOf(cur))
			if err != nil {
				return err
			}
			_, dropped, err := rt.TemplateEdit(cmd.Context(), t)
			if err != nil {
				return err
			}
			if dropped {
				fmt.Fprintf(a.stdout, "%s: changed; its snapshot no longer matched and was removed: `mvmctl template build %s` makes a new one\n", t.Name, t.Name)
			} else {
				fmt.Fprintf(a.stdout, "%s: changed\n", t.Name)
			}
			return nil
		},
	}
	ef.register(edit, false)

	rm := perVMCmd(a, "rm NAME...", "Remove templates and their snapshots (VMs started from them go on)", (*runtime.Runtime).TemplateRemove)
	c.AddCommand(create, build, ls, info, edit, rm)
	return c
}

func dataDisk(mib int64) string {
	if mib == 0 {
		return ""
	}
	return vm.FormatMiB(mib)
}

// hypervisorOf says what a template's VMs boot on: "auto", "qemu", or
// "firecracker" with " (jailed)".
func hypervisorOf(tp store.Template) string {
	h := cmp.Or(tp.Hypervisor, vm.HypervisorAuto)
	if tp.Jailer {
		h += " (jailed)"
	}
	return h
}
