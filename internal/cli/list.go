package cli

import (
	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/runtime"
	"github.com/mvm-dev/mvm/internal/ui"
)

// listSpec describes an `ls` subcommand over a list of T.
type listSpec[T any] struct {
	short    string
	jsonHelp string
	list     func(*runtime.Runtime) ([]T, error)
	view     func(T) any // what --json prints for an item
	header   []string
	row      func(T) []string
}

// newListCmd makes an `ls` subcommand: a table, or with --json an array (never null).
func newListCmd[T any](a *app, s listSpec[T]) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "ls",
		Short: s.short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			items, err := s.list(rt)
			if err != nil {
				return err
			}
			if asJSON {
				views := make([]any, 0, len(items))
				for _, it := range items {
					views = append(views, s.view(it))
				}
				return ui.JSON(a.stdout, views)
			}
			t := ui.NewTable(a.stdout, s.header...)
			for _, it := range items {
				t.Row(s.row(it)...)
			}
			return t.Flush()
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, s.jsonHelp)
	return c
}
