package cli

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/hostcheck"
	"github.com/mvm-dev/mvm/internal/ui"
)

func newDoctorCmd(a *app) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "doctor",
		Short: "Check every host prerequisite; each failing check names its fix",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root, err := a.layout()
			if err != nil {
				return err
			}
			checks := hostcheck.Doctor(cmd.Context(), root)
			if asJSON {
				if err := ui.JSON(a.stdout, checks); err != nil {
					return err
				}
			} else {
				t := ui.NewTable(a.stdout, "STATUS", "CHECK", "DETAIL", "FIX")
				for _, c := range checks {
					t.Row(c.Status, c.Name, c.Detail, c.Fix)
				}
				if err := t.Flush(); err != nil {
					return err
				}
			}
			if hostcheck.Failed(checks) {
				return &ExitError{Code: 1, Err: errors.New("some checks failed: apply the fixes above (most are `mvmctl bootstrap`)")}
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the checks as JSON")
	return c
}
