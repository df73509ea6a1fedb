package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/hostcheck"
	"github.com/mvm-dev/mvm/internal/ui"
)

func newDoctorCmd(a *app) *cobra.Command {
	var asJSON, firecracker bool
	c := &cobra.Command{
		Use:   "doctor",
		Short: "Check every host prerequisite; each failing check names its fix",
		Long: `doctor checks what this host needs to run microVMs and names the fix for each
check that fails.

The host checks are what QEMU VMs need; any "fail" among them makes doctor exit 1.
The Firecracker checks (its firecracker and jailer programs, KVM, and whether the
default image's kernel fits Firecracker's device model) follow in a section of their
own. They are optional: a host without Firecracker is healthy for QEMU, so a failing
one is shown as "warn" and does not change the exit status, unless --firecracker is
given, which makes them count like the others.

--json prints one array of checks, each {"name", "status", "detail", "fix", "group"}:
status is ok, warn, fail or info; fix is there when there is something to do; group
is "host" or "firecracker".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root, err := a.layout()
			if err != nil {
				return err
			}
			checks := hostcheck.Doctor(cmd.Context(), root, hostcheck.DoctorOptions{Firecracker: firecracker})
			if asJSON {
				if err := ui.JSON(a.stdout, checks); err != nil {
					return err
				}
			} else if err := printChecks(a, checks, firecracker); err != nil {
				return err
			}
			if hostcheck.Failed(checks) {
				return &ExitError{Code: 1, Err: errors.New("some checks failed: apply the fixes above (most are `mvmctl bootstrap`)")}
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the checks as JSON")
	c.Flags().BoolVar(&firecracker, "firecracker", false, "make the Firecracker checks count toward the result")
	return c
}

// printChecks prints the host's checks, then Firecracker's under a heading that
// says whether they count.
func printChecks(a *app, checks []hostcheck.Check, firecracker bool) error {
	for i, group := range []string{hostcheck.GroupHost, hostcheck.GroupFirecracker} {
		if group == hostcheck.GroupFirecracker {
			heading := "Firecracker (optional; `mvmctl doctor --firecracker` makes these count):"
			if firecracker {
				heading = "Firecracker:"
			}
			fmt.Fprintln(a.stdout)
			fmt.Fprintln(a.stdout, heading)
		}
		t := ui.NewTable(a.stdout, "STATUS", "CHECK", "DETAIL", "FIX")
		n := 0
		for _, c := range checks {
			if c.Group == group {
				t.Row(c.Status, c.Name, c.Detail, c.Fix)
				n++
			}
		}
		if n == 0 && i > 0 {
			continue
		}
		if err := t.Flush(); err != nil {
			return err
		}
	}
	return nil
}
