package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/runtime"
	"github.com/mvm-dev/mvm/internal/ui"
)

func newNetworkCmd(a *app) *cobra.Command {
	c := &cobra.Command{Use: "network", Short: "Manage networks: bridges with a subnet, NAT and isolation"}
	var o runtime.NetworkOptions
	create := &cobra.Command{
		Use:   "create NAME [--subnet CIDR] [--no-nat] [--isolated] [--dns IP]",
		Short: "Create a network (a bridge with its own subnet; VMs on it get static addresses)",
		Long: `create makes a network VMs can join with 'mvmctl up --network NAME'. VMs on different
networks cannot reach each other; VMs reach the host only for DNS, which mvm serves on
the gateway address. With NAT (the default) VMs reach the outside through the host;
--no-nat keeps them inside. On an --isolated network VMs reach only their gateway, not
each other. --dns sets the resolvers the gateway's DNS forwards to (default: the host's).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			o.Name = args[0]
			n, err := rt.NetworkCreate(o)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s: subnet %s, gateway %s, bridge %s\n", n.Name, n.Subnet, n.Gateway, n.Bridge)
			return nil
		},
	}
	create.Flags().StringVar(&o.Subnet, "subnet", "", "IPv4 subnet, e.g. 10.42.0.0/24 (default: a free one)")
	create.Flags().BoolVar(&o.NoNAT, "no-nat", false, "no route out of the network")
	create.Flags().BoolVar(&o.Isolated, "isolated", false, "VMs reach only their gateway, not each other")
	create.Flags().StringArrayVar(&o.DNS, "dns", nil, "resolver the gateway's DNS forwards to, IP[:PORT] (repeatable)")

	ls := newListCmd(a, listSpec[runtime.NetworkInfo]{
		short:    "List networks",
		jsonHelp: "print a JSON array",
		list:     (*runtime.Runtime).Networks,
		view:     func(n runtime.NetworkInfo) any { return n },
		header:   []string{"NAME", "SUBNET", "GATEWAY", "BRIDGE", "NAT", "ISOLATED", "VMS"},
		row: func(n runtime.NetworkInfo) []string {
			return []string{n.Name, n.Subnet.String(), n.Gateway.String(), n.Bridge, yesNo(n.NAT), yesNo(n.Isolated), fmt.Sprint(len(n.VMs))}
		},
	})

	var inspectJSON bool
	inspect := &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show a network and the VMs on it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			nets, err := rt.Networks()
			if err != nil {
				return err
			}
			for _, n := range nets {
				if n.Name != args[0] {
					continue
				}
				if inspectJSON {
					return ui.JSON(a.stdout, n)
				}
				dns := "the host's resolvers"
				if len(n.DNS) > 0 {
					var s []string
					for _, d := range n.DNS {
						s = append(s, d.String())
					}
					dns = strings.Join(s, ", ")
				}
				fmt.Fprintf(a.stdout, "Name:      %s\nSubnet:    %s\nGateway:   %s (DNS for the VMs, forwarded to %s)\nBridge:    %s\nNAT:       %s\nIsolated:  %s\nVMs:       %s\n",
					n.Name, n.Subnet, n.Gateway, dns, n.Bridge, yesNo(n.NAT), yesNo(n.Isolated), orDash(strings.Join(n.VMs, ", ")))
				return nil
			}
			return fmt.Errorf("no network named %q: see `mvmctl network ls`", args[0])
		},
	}
	inspect.Flags().BoolVar(&inspectJSON, "json", false, "print as JSON")

	rm := &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove networks with their bridges and rules (refused while a VM uses one)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			for _, n := range args {
				if err := rt.NetworkRemove(n); err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, n)
			}
			return nil
		},
	}
	c.AddCommand(create, ls, inspect, rm)
	return c
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
