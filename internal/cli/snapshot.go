package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/runtime"
	"github.com/mvm-dev/mvm/internal/store"
	"github.com/mvm-dev/mvm/internal/ui"
	"github.com/mvm-dev/mvm/internal/vm"
)

func newPauseCmd(a *app) *cobra.Command {
	return perVMCmd(a, "pause NAME...", "Stop a VM's vCPUs (it keeps its memory, disks and address; resume continues it)",
		(*runtime.Runtime).Pause)
}

func newResumeCmd(a *app) *cobra.Command {
	return perVMCmd(a, "resume NAME...", "Continue paused VMs", (*runtime.Runtime).Resume)
}

// perVMCmd is a command that applies op to each named VM (or snapshot, template) in
// turn, printing each name once done, and stops at the first failure.
func perVMCmd(a *app, use, short string, op func(*runtime.Runtime, context.Context, string) error) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			for _, n := range args {
				if err := op(rt, cmd.Context(), n); err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, n)
			}
			return nil
		},
	}
}

func newSleepCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "sleep NAME",
		Short: "Save a VM's state to disk and end its process (memory freed); wake brings it back",
		Long: `sleep saves a running or paused VM's memory and device state next to its disks
and ends the hypervisor, so the VM holds no memory or CPU. It keeps its name, address
and disks; 'mvmctl wake NAME' restores it where it was. 'mvmctl ls' shows sleeping VMs
and the disk they take.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			begin := time.Now()
			res, err := rt.Sleep(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s is sleeping: state saved in %.2fs, %s on disk\n", args[0], time.Since(begin).Seconds(),
				vm.FormatBytes(res.SizeBytes))
			return nil
		},
	}
}

func newWakeCmd(a *app) *cobra.Command {
	var bootTimeout time.Duration
	c := &cobra.Command{
		Use:   "wake NAME",
		Short: "Restore a sleeping VM with its name, address and disks",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			st, err := rt.Wake(cmd.Context(), args[0], bootTimeout)
			if err != nil {
				return err
			}
			r := st.Record
			fmt.Fprintf(a.stdout, "%s is running: ip %s, woken in %.2fs\n", r.Spec.Name, hostIP(orNone(r.IP)), st.Ready.Seconds())
			return nil
		},
	}
	c.Flags().DurationVar(&bootTimeout, "timeout", 2*time.Minute, "give up if the guest agent has not answered by then")
	return c
}

// snapshotView is the scriptable shape of a snapshot in `snapshot ls --json`.
type snapshotView struct {
	Name           string    `json:"name"`
	Source         string    `json:"source"`
	CreatedAt      time.Time `json:"created_at"`
	SizeBytes      int64     `json:"size_bytes"`
	Image          string    `json:"image"`
	ImageDigest    string    `json:"image_digest"`
	CPUs           int       `json:"cpus"`
	MemoryMiB      int64     `json:"memory_mib"`
	DataDiskMiB    int64     `json:"data_disk_mib"`
	Network        string    `json:"network"`
	Backend        string    `json:"backend"`
	BackendVersion string    `json:"backend_version"`
	Accel          string    `json:"accel"`
}

func snapshotViewOf(s store.Snapshot) snapshotView {
	return snapshotView{Name: s.Name, Source: s.Source, CreatedAt: s.CreatedAt, SizeBytes: s.SizeBytes, Image: s.Image,
		ImageDigest: s.ImageDigest, CPUs: s.CPUs, MemoryMiB: s.MemoryMiB, DataDiskMiB: s.DataDiskMiB, Network: s.Network,
		Backend: s.Backend, BackendVersion: s.BackendVersion, Accel: s.Accel}
}

func newSnapshotCmd(a *app) *cobra.Command {
	c := &cobra.Command{Use: "snapshot", Short: "Save running VMs as snapshots and start new VMs from them (up --snapshot)"}
	var name string
	create := &cobra.Command{
		Use:   "create VM --name NAME",
		Short: "Snapshot a running or paused VM (memory, devices and disks at one instant); the VM goes on",
		Long: `create pauses the VM for as long as saving its memory and copying its disks take, then
lets it go on. 'mvmctl up --snapshot NAME' starts new VMs from the snapshot, each with
its own name, address, MAC, hostname, agent secret, clock and random state, and its own
copy of the disks. The snapshot's files are sealed with a key of this host: a modified
or truncated snapshot is refused.`,
		Example: `  mvmctl snapshot create web --name web-ready
  mvmctl up -d --snapshot web-ready --name web2`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if name == "" {
				return fmt.Errorf("--name is required: the snapshot's name, e.g. --name %s-ready", args[0])
			}
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			res, err := rt.SnapshotCreate(cmd.Context(), args[0], name)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s: %s on disk, taken in %.2fs (VM paused %.0f ms)\n", name, vm.FormatBytes(res.Snapshot.SizeBytes),
				res.Took.Seconds(), res.Result.PausedMs)
			return nil
		},
	}
	create.Flags().StringVar(&name, "name", "", "snapshot name: a-z, 0-9 and '-' (required)")

	ls := newListCmd(a, listSpec[store.Snapshot]{
		short:    "List snapshots",
		jsonHelp: "print a JSON array (snake_case keys, stable for scripts)",
		list:     (*runtime.Runtime).Snapshots,
		view:     func(s store.Snapshot) any { return snapshotViewOf(s) },
		header:   []string{"NAME", "SOURCE", "CREATED", "SIZE", "IMAGE", "CPUS", "MEMORY", "NETWORK", "BACKEND"},
		row: func(s store.Snapshot) []string {
			return []string{s.Name, s.Source, ui.Duration(time.Since(s.CreatedAt)) + " ago", vm.FormatBytes(s.SizeBytes), s.Image,
				fmt.Sprint(s.CPUs), vm.FormatMiB(s.MemoryMiB), s.Network, s.Backend + " " + s.BackendVersion}
		},
	})

	rm := perVMCmd(a, "rm NAME...", "Remove snapshots (VMs started from them go on)", (*runtime.Runtime).SnapshotRemove)
	c.AddCommand(create, ls, rm)
	return c
}
