package cli

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/ui"
	"github.com/mvm-dev/mvm/internal/version"
)

func newVersionCmd(a *app) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "version",
		Short: "Print mvmctl's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if asJSON {
				return ui.JSON(a.stdout, map[string]any{"version": version.String(), "agent_protocol": proto.Version, "go": runtime.Version()})
			}
			fmt.Fprintf(a.stdout, "mvmctl %s (agent protocol %d, %s)\n", version.String(), proto.Version, runtime.Version())
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return c
}
