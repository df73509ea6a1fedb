package cli

import (
	"errors"
	"log/slog"
	"os"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/supervisor"
)

// Descriptors the CLI hands its supervisor (after stdin, stdout, stderr).
const (
	fdLock       = 3
	fdStatus     = 4
	fdForeground = 5
)

func newSuperviseCmd(a *app) *cobra.Command {
	var name, id string
	var bootTimeout time.Duration
	var foreground bool
	c := &cobra.Command{
		Use:    "_supervise",
		Short:  "Supervise one VM (started by `mvmctl up`; not for direct use)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root, err := a.layout()
			if err != nil {
				return err
			}
			if name == "" || id == "" {
				return errors.New("_supervise needs --name and --id")
			}
			// Inherited descriptors come without close-on-exec: set it, or every
			// program the supervisor runs (mkfs, QEMU) would share the VM's lock and
			// keep it "alive" after the supervisor's death for as long as it lives.
			for _, fd := range []int{fdLock, fdStatus, fdForeground} {
				syscall.CloseOnExec(fd)
			}
			o := supervisor.Options{
				Root: root, Name: name, ID: id, BootTimeout: bootTimeout,
				Lock:   os.NewFile(fdLock, "lock"),
				Status: os.NewFile(fdStatus, "status"),
				Log:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("vm", name),
			}
			if foreground {
				o.Foreground = os.NewFile(fdForeground, "foreground")
			}
			return supervisor.Run(cmd.Context(), o)
		},
	}
	c.Flags().StringVar(&name, "name", "", "VM name")
	c.Flags().StringVar(&id, "id", "", "VM id")
	c.Flags().DurationVar(&bootTimeout, "boot-timeout", 2*time.Minute, "boot timeout")
	c.Flags().BoolVar(&foreground, "foreground", false, "stop the VM when descriptor 5 reaches EOF")
	return c
}
