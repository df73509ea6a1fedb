package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/runtime"
	"github.com/mvm-dev/mvm/internal/supervisor"
	"github.com/mvm-dev/mvm/internal/vm"
)

func newUpCmd(a *app) *cobra.Command {
	var (
		spec        vm.Spec
		memory      string
		dataDisk    string
		detach      bool
		bootTimeout time.Duration
		publish     []string
		egress      string
		snapshot    string
		template    string
	)
	c := &cobra.Command{
		Use:   "up [flags]",
		Short: "Boot a microVM (foreground: console on the terminal, Ctrl-C stops it; -d: in the background)",
		Example: `  mvmctl up -d --name web
  mvmctl up -d --cpus 2 --memory 1G --data-disk 512M
  mvmctl up -d -p 8080:80 --name web   # guest port 80 on 127.0.0.1:8080
  mvmctl up --name t1          # console on the terminal; Ctrl-C stops the VM
  mvmctl up -d --snapshot web-ready --name web2   # a new VM from a snapshot
  mvmctl up -d --template api --name a1            # from a template's snapshot`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			if spec.Ports, err = vm.ParsePorts(publish); err != nil {
				return err
			}
			if spec.Egress, err = vm.ParseEgress(egress); err != nil {
				return err
			}
			if spec.MemoryMiB, err = vm.ParseMiB("--memory", memory, vm.MinMemoryMiB); err != nil {
				return err
			}
			if dataDisk != "" {
				if spec.DataDiskMiB, err = vm.ParseMiB("--data-disk", dataDisk, vm.MinDataDiskMiB); err != nil {
					return err
				}
			}
			if snapshot != "" || template != "" {
				// The snapshot or template decides what was not given explicitly.
				fl := cmd.Flags()
				if !fl.Changed("image") {
					spec.Image = ""
				}
				if !fl.Changed("cpus") {
					spec.CPUs = 0
				}
				if !fl.Changed("memory") {
					spec.MemoryMiB = 0
				}
				if !fl.Changed("network") {
					spec.Network = ""
				}
				if !fl.Changed("hypervisor") {
					spec.Hypervisor = ""
				}
			}
			rt, err := a.bareRuntime()
			if err != nil {
				return err
			}
			opts := runtime.UpOptions{Spec: spec, Foreground: !detach, BootTimeout: bootTimeout, Snapshot: snapshot, Template: template}
			// Bad input fails before anything is written.
			if err := rt.Prepare(cmd.Context(), &opts); err != nil {
				return err
			}
			var console io.ReadWriteCloser
			if !detach {
				opts.OnStarted = func(rec vm.Record, notice string) {
					if notice != "" {
						fmt.Fprintln(a.stderr, "notice:", notice)
					}
					fmt.Fprintf(a.stderr, "Booting %s; Ctrl-C stops it.\n", rec.Spec.Name)
					if c, err := rt.AttachConsole(cmd.Context(), rec.Spec.Name); err == nil {
						console = c
						go func() { _, _ = io.Copy(a.stdout, c) }()
					}
				}
			}
			st, err := rt.Up(cmd.Context(), opts)
			if err != nil {
				err = withRootHint(err)
				if console != nil {
					console.Close()
				}
				return err
			}
			r := st.Record
			if detach {
				if st.Notice != "" {
					fmt.Fprintln(a.stderr, "notice:", st.Notice)
				}
				ip := r.IP
				if ip == "" {
					ip = "none"
				}
				from := ""
				if r.FromSnapshot != "" {
					from = ", restored from " + r.FromSnapshot
				}
				fmt.Fprintf(a.stdout, "%s is running: ip %s, backend %s, accel %s, ready in %.2fs%s\n",
					r.Spec.Name, hostIP(ip), r.Backend, r.Accel, st.Ready.Seconds(), from)
				return nil
			}
			return a.foreground(rt, st, console)
		},
	}
	f := c.Flags()
	f.StringVar(&spec.Name, "name", "", "VM name: a-z, 0-9 and '-', at most 63 (default: a random adjective-noun)")
	f.StringVar(&spec.Image, "image", image.DefaultName, "image to boot (see `mvmctl image ls`)")
	f.IntVar(&spec.CPUs, "cpus", 1, "virtual CPUs (1 to the host's core count)")
	f.StringVar(&memory, "memory", "512M", "guest memory, e.g. 512M or 1G (at least 128M)")
	f.StringVar(&dataDisk, "data-disk", "", "add a data drive of this size (vdd, mounted at /mnt/data), e.g. 256M")
	f.StringVar(&spec.Network, "network", vm.NetworkDefault, "network to join: default, one made with `mvmctl network create`, or none (no NIC)")
	f.StringVar(&egress, "egress", "allow", "outbound traffic: allow, deny (only the gateway's DNS), or allow=HOST:PORT[,HOST:PORT...]\n"+
		"(names are resolved when the VM starts)")
	f.StringVar(&spec.Hypervisor, "hypervisor", vm.HypervisorAuto, "hypervisor: auto (Firecracker where it and KVM are usable and the image's kernel fits it, else QEMU), qemu or firecracker\n"+
		"(with --snapshot or --template: where the snapshot was taken, or the template's)")
	f.BoolVar(&spec.Jailer, "jailer", false, "run Firecracker under its jailer: chroot, a uid/gid of the VM's own, cgroup v2 limits (needs --hypervisor firecracker)")
	f.StringVar(&spec.Kernel, "kernel", "", "boot this kernel with the image's initramfs and rootfs: an uncompressed ELF vmlinux,\n"+
		"or a bzImage for QEMU only (default: the image's)")
	f.BoolVarP(&detach, "detach", "d", false, "run in the background and return once the guest agent answers")
	f.DurationVar(&bootTimeout, "boot-timeout", 2*time.Minute, "give up if the guest agent has not answered by then")
	f.StringVar(&snapshot, "snapshot", "", "start from this snapshot (see `mvmctl snapshot ls`) instead of booting")
	f.StringVar(&template, "template", "", "start from this template's snapshot (cold boot with its settings if it has none)")
	f.StringArrayVarP(&publish, "publish", "p", nil, "publish a guest TCP port for the VM's life: [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp];\n"+
		"listens on 127.0.0.1 unless HOST_IP is given (not on every interface, unlike docker)")
	return c
}

// foreground streams the console until the VM ends; Ctrl-C stops the VM.
func (a *app) foreground(rt *runtime.Runtime, st *runtime.Started, console io.ReadWriteCloser) error {
	r := st.Record
	fmt.Fprintf(a.stderr, "%s is running: ip %s, ready in %.2fs. Ctrl-C stops it.\n", r.Spec.Name, hostIP(orNone(r.IP)), st.Ready.Seconds())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	go func() {
		st.WaitSupervisor()
		close(done)
	}()
	select {
	case <-done:
	case <-sigs:
		fmt.Fprintf(a.stderr, "\nStopping %s...\n", r.Spec.Name)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := supervisor.RequestStop(ctx, rt.Root.VM(r.ID).ControlSocket(), supervisor.DefaultStopTimeout)
		cancel()
		if err != nil {
			st.Foreground.Close() // the supervisor stops the VM when we let go
		}
		<-done
	}
	if console != nil {
		console.Close()
	}
	st.Foreground.Close()
	final, err := rt.Get(r.Spec.Name)
	if err == nil {
		fmt.Fprintf(a.stderr, "%s exited: %s\n", r.Spec.Name, final.ExitReason)
	}
	return nil
}

// hostIP drops the prefix length of a CIDR for display.
func hostIP(cidr string) string {
	ip, _, _ := strings.Cut(cidr, "/")
	return ip
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
