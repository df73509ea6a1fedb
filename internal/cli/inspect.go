package cli

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/ui"
	"github.com/mvm-dev/mvm/internal/vm"
)

// inspectView is `inspect --json`: the VM as ls shows it, plus what the guest says.
type inspectView struct {
	vmView
	EgressResolved []string         `json:"egress_resolved"`
	Guest          *proto.AgentInfo `json:"guest"`
}

func newInspectCmd(a *app) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "inspect [flags] NAME",
		Short: "Show a microVM's configuration and what its agent reports (version, uptime, addresses, mounts, load, memory)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			rec, info, err := rt.Inspect(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			v := inspectView{vmView: viewOf(rec, rt.DiskUsage(rec)), EgressResolved: rec.EgressResolved, Guest: info}
			if v.EgressResolved == nil {
				v.EgressResolved = []string{}
			}
			if asJSON {
				return ui.JSON(a.stdout, v)
			}
			w := a.stdout
			row := func(k, val string) { fmt.Fprintf(w, "%-14s %s\n", k+":", val) }
			row("Name", v.Name)
			row("ID", v.ID)
			row("State", v.State)
			if v.ExitReason != "" {
				row("Exit reason", v.ExitReason)
			}
			row("Backend", v.Backend+" ("+orDash(v.Accel)+")")
			row("Resources", fmt.Sprintf("%d CPU, %s memory", v.CPUs, vm.FormatMiB(v.MemoryMiB)))
			if v.DataDiskMiB > 0 {
				row("Data disk", vm.FormatMiB(v.DataDiskMiB)+" at /mnt/data")
			}
			row("Network", v.Network+" "+orDash(v.IP)+" "+v.MAC)
			var ports []string
			for _, p := range rec.Spec.Ports {
				ports = append(ports, p.String())
			}
			row("Ports", orDash(strings.Join(ports, ", ")))
			egress := rec.Spec.Egress.String()
			if len(rec.EgressResolved) > 0 {
				egress += " (" + strings.Join(rec.EgressResolved, ", ") + ")"
			}
			row("Egress", egress)
			row("Image", v.Image+" ("+shortDigest(v.ImageDigest)+", kernel "+v.Kernel+")")
			if rec.Spec.Kernel != "" {
				row("Kernel", v.Kernel+" from --kernel "+rec.Spec.Kernel+" (the VM boots its own copy)")
			}
			row("Created", v.CreatedAt.Local().Format(time.RFC3339))
			if info != nil {
				printGuestInfo(w, info)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return c
}

// printGuestInfo prints what the agent reports. All of it comes from the guest, so
// text is escaped: it must not be able to send the terminal escape sequences or forge
// lines.
func printGuestInfo(w io.Writer, info *proto.AgentInfo) {
	row := func(k, val string) { fmt.Fprintf(w, "%-14s %s\n", k+":", ui.PrintableLine(val)) }
	row("Agent", info.AgentVersion)
	row("Guest kernel", info.Kernel)
	row("Uptime", ui.Duration(time.Duration(info.UptimeSec*float64(time.Second))))
	row("Addresses", orDash(strings.Join(info.Addresses, ", ")))
	if len(info.Load) == 3 {
		row("Load", fmt.Sprintf("%.2f %.2f %.2f", info.Load[0], info.Load[1], info.Load[2]))
	}
	row("Memory", fmt.Sprintf("%s available of %s", vm.FormatBytes(info.MemAvailKiB*1024), vm.FormatBytes(info.MemTotalKiB*1024)))
	row("Processes", fmt.Sprint(info.Processes))
	fmt.Fprintln(w, "Mounts:")
	for _, m := range info.Mounts {
		fmt.Fprintf(w, "  %-14s %-10s %-8s %s\n", ui.PrintableLine(m.Target), ui.PrintableLine(m.Source),
			ui.PrintableLine(m.FSType), ui.PrintableLine(m.Options))
	}
}

func shortDigest(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	return d
}
