package cli

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/bench"
	"github.com/mvm-dev/mvm/internal/ui"
	"github.com/mvm-dev/mvm/internal/vm"
)

func newBenchCmd(a *app) *cobra.Command {
	c := &cobra.Command{Use: "bench", Short: "Measure mvm against baselines run side by side (reports ratios)"}
	var runs int
	var asJSON, network bool
	boot := &cobra.Command{
		Use:   "boot",
		Short: "Time `mvmctl up -d` to agent ready against QEMU started by hand with the same kernel, initramfs and drives",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root, err := a.layout()
			if err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			p := ui.NewProgress(os.Stderr, asJSON)
			rep, err := bench.Boot(cmd.Context(), bench.BootOptions{Root: root, Mvmctl: self, Runs: runs, Network: network, Progress: p.Step})
			if err != nil {
				return err
			}
			if asJSON {
				return ui.JSON(a.stdout, rep)
			}
			if err := seriesTable(a.stdout, rep.Baseline, rep.MVM, rep.MVMNet); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "ratio mvm/by-hand: %.3f (target <= 1.10), %d runs, accel %s\n", rep.Ratio, rep.Runs, rep.Accel)
			return nil
		},
	}
	boot.Flags().IntVar(&runs, "runs", 5, "timed runs of each (after one warm-up)")
	boot.Flags().BoolVar(&network, "network", false, "also time `up -d` with the default network (bridge + TAP)")
	boot.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	c.AddCommand(boot, newBenchAgentCmd(a), newBenchNetworkCmd(a), newBenchSnapshotCmd(a))
	return c
}

func newBenchAgentCmd(a *app) *cobra.Command {
	var runs, repeat int
	var size, qgaSize int64
	var asJSON bool
	c := &cobra.Command{
		Use:   "agent",
		Short: "Compare mvm-agent with QEMU's qemu-ga and the bare virtio-serial channel in one VM (exec latency, copy throughput)",
		Long: `agent boots one VM by hand (1 GiB, the default image plus Debian's qemu-guest-agent,
fetched with apt-get download on first use) carrying mvm-agent, qemu-ga and two bare
virtio-serial ports, and measures in the same run: exec round trips of /bin/true
through each agent (p50, p99), then a file copied each way through the bare channel
(dd/cat in the guest), mvm cp, and qemu-ga's guest-file-write/read.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root, err := a.layout()
			if err != nil {
				return err
			}
			p := ui.NewProgress(os.Stderr, asJSON)
			rep, err := bench.Agent(cmd.Context(), bench.AgentOptions{Root: root, Runs: runs, SizeMiB: size, Repeat: repeat, QGAMiB: qgaSize, Progress: p.Step})
			if err != nil {
				return err
			}
			if asJSON {
				return ui.JSON(a.stdout, rep)
			}
			t := ui.NewTable(a.stdout, "EXEC", "P50", "P99", "MIN")
			for _, l := range rep.Latency {
				t.Row(l.Name, fmt.Sprintf("%.2f ms", l.P50), fmt.Sprintf("%.2f ms", l.P99), fmt.Sprintf("%.2f ms", l.Min))
			}
			t.Flush()
			fmt.Fprintln(a.stdout)
			t = ui.NewTable(a.stdout, "COPY", "SIZE", "TIME", "RATE")
			for _, x := range rep.Transfers {
				t.Row(x.Name, fmt.Sprintf("%.0f MiB", x.MiB), fmt.Sprintf("%.2f s", x.Seconds), fmt.Sprintf("%.1f MiB/s", x.MiBps))
			}
			t.Flush()
			fmt.Fprintf(a.stdout, "\nexec p50 mvm-agent/qemu-ga: %.2f (target <= 0.5)\n", rep.ExecVsQGA)
			fmt.Fprintf(a.stdout, "cp in / raw in: %.2f, cp out / raw out: %.2f (target >= 0.6 each)\n", rep.CopyInVsRaw, rep.CopyOutVsRaw)
			fmt.Fprintf(a.stdout, "agent RSS: %d KiB before the copies, %d KiB after; accel %s\n", rep.AgentRSSBefore, rep.AgentRSSAfter, rep.Accel)
			return nil
		},
	}
	c.Flags().IntVar(&runs, "runs", 200, "timed exec round trips per agent (after 10 warm-up)")
	c.Flags().Int64Var(&size, "size", 256, "MiB copied each way through the bare channel and mvm cp")
	c.Flags().Int64Var(&qgaSize, "qga-size", 64, "MiB copied each way through qemu-ga (it is much slower)")
	c.Flags().IntVar(&repeat, "repeat", 3, "rounds of the raw and mvm copies (medians are reported)")
	c.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return c
}

func newBenchNetworkCmd(a *app) *cobra.Command {
	var n int
	var asJSON bool
	c := &cobra.Command{
		Use:   "network",
		Short: "Time host network setup and teardown per VM (TAP, bridge port, rules) against ip(8), in a namespace of its own",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep, err := bench.Network(n)
			if err != nil {
				return err
			}
			if asJSON {
				return ui.JSON(a.stdout, rep)
			}
			t := ui.NewTable(a.stdout, "WHAT", "P50", "P99")
			t.Row("mvm setup (TAP, bridge port, up, rules)", fmt.Sprintf("%.2f ms", rep.SetupP50), fmt.Sprintf("%.2f ms", rep.SetupP99))
			t.Row("ip tuntap add + link set master + up", fmt.Sprintf("%.2f ms", rep.IPSetupP50), fmt.Sprintf("%.2f ms", rep.IPSetupP99))
			t.Row("mvm teardown (TAP released, rules)", fmt.Sprintf("%.2f ms", rep.TeardownP50), fmt.Sprintf("%.2f ms", rep.TeardownP99))
			t.Row("ip link del", fmt.Sprintf("%.2f ms", rep.IPTeardownP50), fmt.Sprintf("%.2f ms", rep.IPTeardownP99))
			t.Flush()
			fmt.Fprintf(a.stdout, "mvm setup split (p50): TAP and bridge port %.2f ms, rules %.2f ms\n", rep.TAPP50, rep.RulesP50)
			fmt.Fprintf(a.stdout, "p50 ratio mvm/ip: setup %.2f, teardown %.2f (%d VMs)\n", rep.SetupRatioP50, rep.TeardownRatioP50, rep.VMs)
			return nil
		},
	}
	c.Flags().IntVar(&n, "vms", 50, "VMs' worth of setup to time")
	c.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return c
}

func newBenchSnapshotCmd(a *app) *cobra.Command {
	var runs, parallel int
	var network string
	var asJSON bool
	c := &cobra.Command{
		Use:   "snapshot",
		Short: "Compare starting VMs from a snapshot with cold boots (restore/cold ratio, snapshot time and size, parallel restores)",
		Long: `snapshot runs, through mvmctl as a user would: cold boots (up -d) to agent ready,
snapshots of a running VM (time, size), restores (up -d --snapshot) to agent ready with
the clone's own identity taken, and --parallel restores started at once.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root, err := a.layout()
			if err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			p := ui.NewProgress(os.Stderr, asJSON)
			rep, err := bench.Snapshot(cmd.Context(), bench.SnapshotOptions{Root: root, Mvmctl: self, Runs: runs, Parallel: parallel,
				Network: network, Progress: p.Step})
			if err != nil {
				return err
			}
			if asJSON {
				return ui.JSON(a.stdout, rep)
			}
			if err := seriesTable(a.stdout, rep.ColdBoot, rep.Create, rep.Restore); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "snapshot size %s; restore/cold ratio %.3f (target <= 0.15); %d restores at once: %.0f ms, %.1f VMs/s (network %s, accel %s, %d runs)\n",
				vm.FormatBytes(rep.SnapshotBytes), rep.Ratio, rep.Parallel, rep.ParallelMs, rep.ParallelRate, rep.Network, rep.Accel, rep.Runs)
			return nil
		},
	}
	c.Flags().IntVar(&runs, "runs", 5, "timed runs of each (after one warm-up)")
	c.Flags().IntVar(&parallel, "parallel", 10, "restores started at once")
	c.Flags().StringVar(&network, "network", "none", "network of the VMs: none, default or a named one")
	c.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return c
}

// seriesTable prints timed series (median, min, max in ms); unnamed ones were not run.
func seriesTable(w io.Writer, series ...bench.Series) error {
	t := ui.NewTable(w, "WHAT", "MEDIAN", "MIN", "MAX")
	for _, s := range series {
		if s.Name != "" {
			t.Row(s.Name, fmt.Sprintf("%.0f ms", s.Median), fmt.Sprintf("%.0f ms", s.Min), fmt.Sprintf("%.0f ms", s.Max))
		}
	}
	return t.Flush()
}
