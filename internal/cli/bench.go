package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/bench"
	"github.com/mvm-dev/mvm/internal/ui"
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
			t := ui.NewTable(a.stdout, "WHAT", "MEDIAN", "MIN", "MAX")
			for _, s := range []bench.Series{rep.Baseline, rep.MVM, rep.MVMNet} {
				if s.Name != "" {
					t.Row(s.Name, fmt.Sprintf("%.0f ms", s.Median), fmt.Sprintf("%.0f ms", s.Min), fmt.Sprintf("%.0f ms", s.Max))
				}
			}
			if err := t.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "ratio mvm/by-hand: %.3f (target <= 1.10), %d runs, accel %s\n", rep.Ratio, rep.Runs, rep.Accel)
			return nil
		},
	}
	boot.Flags().IntVar(&runs, "runs", 5, "timed runs of each (after one warm-up)")
	boot.Flags().BoolVar(&network, "network", false, "also time `up -d` with the default network (bridge + TAP)")
	boot.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	c.AddCommand(boot)
	return c
}
