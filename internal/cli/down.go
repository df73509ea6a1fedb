package cli

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/supervisor"
)

func newDownCmd(a *app) *cobra.Command {
	var all bool
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "down [flags] NAME... | --all",
		Short: "Stop microVMs (agent poweroff, then a hard stop after --timeout) and remove them",
		Args: func(cmd *cobra.Command, args []string) error {
			if all && len(args) > 0 {
				return errors.New("give VM names or --all, not both")
			}
			if !all && len(args) == 0 {
				return errors.New("give the VMs to remove, or --all (see `mvmctl ls -a`)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			names := args
			if all {
				if names, err = rt.Names(); err != nil {
					return err
				}
			}
			var errs []error
			for _, n := range names {
				if err := rt.Down(cmd.Context(), n, timeout); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintln(a.stdout, n)
			}
			return errors.Join(errs...)
		},
	}
	c.Flags().BoolVar(&all, "all", false, "remove every VM")
	c.Flags().DurationVarP(&timeout, "timeout", "t", supervisor.DefaultStopTimeout, "how long the guest gets to power off before a hard stop")
	return c
}
