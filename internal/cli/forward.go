package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/forward"
	"github.com/mvm-dev/mvm/internal/vm"
)

func newForwardCmd(a *app) *cobra.Command {
	var publish []string
	c := &cobra.Command{
		Use:   "forward NAME -p [HOST_IP:]HOST_PORT:GUEST_PORT [-p ...]",
		Short: "Forward host TCP ports to a microVM's ports through its agent, until Ctrl-C",
		Long: `forward listens on host ports and carries each connection to a port in the guest
through mvm-agent, so it works whatever the VM's network (also --network none).
Ports listen on 127.0.0.1 unless an address is given. For forwards that live as long
as the VM, use 'mvmctl up -p'.`,
		Example: `  mvmctl forward web -p 8080:80
  mvmctl forward web -p 8080:80 -p 127.0.0.1:9000:9000`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(publish) == 0 {
				return fmt.Errorf("give at least one -p HOST_PORT:GUEST_PORT")
			}
			specs, err := vm.ParsePorts(publish)
			if err != nil {
				return err
			}
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			return rt.Forward(cmd.Context(), args[0], specs, func(ls []forward.Listener) {
				for _, l := range ls {
					fmt.Fprintf(a.stderr, "Forwarding %s -> %s:%d\n", l.Addr(), args[0], l.Spec.GuestPort)
				}
				fmt.Fprintln(a.stderr, "Ctrl-C stops.")
			})
		},
	}
	c.Flags().StringArrayVarP(&publish, "publish", "p", nil, "[HOST_IP:]HOST_PORT:GUEST_PORT[/tcp] (repeatable)")
	return c
}
