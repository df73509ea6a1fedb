package cli

import (
	"github.com/spf13/cobra"
)

func newLogsCmd(a *app) *cobra.Command {
	var follow bool
	var lines int
	c := &cobra.Command{
		Use:   "logs [flags] NAME",
		Short: "Print a microVM's serial console log (-f follows it until the VM stops)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			return rt.Logs(cmd.Context(), args[0], lines, follow, a.stdout)
		},
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until the VM stops")
	c.Flags().IntVarP(&lines, "tail", "n", -1, "print only the last N lines")
	return c
}
