package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/ui"
	"github.com/mvm-dev/mvm/internal/vm"
)

// vmView is the stable, scriptable shape of a VM in `ls --json`.
type vmView struct {
	Name        string        `json:"name"`
	ID          string        `json:"id"`
	State       string        `json:"state"`
	Backend     string        `json:"backend"`
	Accel       string        `json:"accel"`
	CPUs        int           `json:"cpus"`
	MemoryMiB   int64         `json:"memory_mib"`
	DataDiskMiB int64         `json:"data_disk_mib"`
	Network     string        `json:"network"`
	IP          string        `json:"ip"`
	MAC         string        `json:"mac"`
	Image       string        `json:"image"`
	ImageDigest string        `json:"image_digest"`
	Kernel      string        `json:"kernel"`
	CreatedAt   time.Time     `json:"created_at"`
	StartedAt   *time.Time    `json:"started_at"`
	ReadyAt     *time.Time    `json:"ready_at"`
	ExitedAt    *time.Time    `json:"exited_at"`
	ExitReason  string        `json:"exit_reason"`
	Ports       []vm.PortSpec `json:"ports"`
	Egress      string        `json:"egress"`
	// DiskBytes is what the VM's disks (and, sleeping, its saved state) take on the host.
	DiskBytes    int64      `json:"disk_bytes"`
	FromSnapshot string     `json:"from_snapshot"`
	Template     string     `json:"template"`
	SleptAt      *time.Time `json:"slept_at"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func viewOf(r vm.Record, disk int64) vmView {
	ip := ""
	if r.IP != "" {
		ip, _, _ = strings.Cut(r.IP, "/")
	}
	if r.Spec.Ports == nil {
		r.Spec.Ports = []vm.PortSpec{}
	}
	return vmView{
		Name: r.Spec.Name, ID: r.ID, State: string(r.State), Backend: r.Backend, Accel: r.Accel,
		CPUs: r.Spec.CPUs, MemoryMiB: r.Spec.MemoryMiB, DataDiskMiB: r.Spec.DataDiskMiB, Network: r.Spec.Network,
		IP: ip, MAC: r.MAC, Image: r.Spec.Image, ImageDigest: r.ImageRef, Kernel: r.Kernel,
		CreatedAt: r.CreatedAt, StartedAt: timePtr(r.StartedAt), ReadyAt: timePtr(r.ReadyAt), ExitedAt: timePtr(r.ExitedAt),
		ExitReason: r.ExitReason, Ports: r.Spec.Ports, Egress: r.Spec.Egress.String(),
		DiskBytes: disk, FromSnapshot: r.FromSnapshot, Template: r.Template, SleptAt: timePtr(r.SleptAt),
	}
}

func newLsCmd(a *app) *cobra.Command {
	var all, asJSON, quiet bool
	c := &cobra.Command{
		Use:     "ls [flags]",
		Aliases: []string{"ps", "list"},
		Short:   "List microVMs (running ones; -a adds exited ones)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			recs, err := rt.List(all)
			if err != nil {
				return err
			}
			if asJSON {
				views := make([]vmView, 0, len(recs))
				for _, r := range recs {
					views = append(views, viewOf(r, rt.DiskUsage(r)))
				}
				return ui.JSON(a.stdout, views)
			}
			if quiet {
				for _, r := range recs {
					fmt.Fprintln(a.stdout, r.Spec.Name)
				}
				return nil
			}
			t := ui.NewTable(a.stdout, "NAME", "STATE", "BACKEND", "ACCEL", "CPUS", "MEMORY", "IP", "UPTIME", "IMAGE", "NETWORK", "PORTS", "DISK")
			for _, r := range recs {
				v := viewOf(r, rt.DiskUsage(r))
				uptime, ip := "-", "-"
				if r.State.HasProcess() && !r.StartedAt.IsZero() {
					uptime = ui.Duration(time.Since(r.StartedAt))
				}
				if r.State.Active() && v.IP != "" {
					ip = v.IP // a sleeping VM keeps its address
				}
				var ports []string
				for _, p := range r.Spec.Ports {
					ports = append(ports, p.String())
				}
				if r.State == vm.StateSleeping && !r.SleptAt.IsZero() {
					uptime = "slept " + ui.Duration(time.Since(r.SleptAt)) + " ago"
				}
				t.Row(v.Name, v.State, v.Backend, orDash(v.Accel), fmt.Sprint(v.CPUs), vm.FormatMiB(v.MemoryMiB), ip, uptime, v.Image,
					v.Network, orDash(strings.Join(ports, ",")), vm.FormatBytes(v.DiskBytes))
			}
			return t.Flush()
		},
	}
	c.Flags().BoolVarP(&all, "all", "a", false, "include exited VMs")
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON array (snake_case keys, stable for scripts)")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print names only")
	return c
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
