package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/mvm-dev/mvm/internal/runtime"
)

// detachKey is Ctrl-], as in telnet and virsh console.
const detachKey = 0x1d

func newConsoleCmd(a *app) *cobra.Command {
	var serial bool
	var shell string
	c := &cobra.Command{
		Use:   "console [flags] NAME",
		Short: "Open an interactive shell in a microVM (--serial: attach to its serial console)",
		Long: `console opens an interactive login shell in the guest on a pseudo-terminal, through
mvm-agent (the same as 'mvmctl exec -it NAME -- /bin/sh -l'); 'exit' or Ctrl-D ends it.

With --serial it attaches the terminal to the guest's serial console (ttyS0) instead:
output appears as it comes and keystrokes go to the guest. The default image runs no
login on the serial console (mvm-agent is PID 1), so that is mostly for watching
kernel and agent messages. Ctrl-] detaches and leaves the VM running.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			if serial {
				return a.serialConsole(cmd.Context(), rt, args[0])
			}
			err = a.runExec(cmd.Context(), rt, args[0], []string{shell, "-l"}, execFlags{interactive: true, tty: true})
			if ee, ok := err.(*ExitError); ok && ee.Err == nil {
				return nil // the shell's own exit status is not mvmctl's failure
			}
			return err
		},
	}
	c.Flags().BoolVar(&serial, "serial", false, "attach to the serial console instead of opening a shell")
	c.Flags().StringVar(&shell, "shell", "/bin/sh", "shell to run in the guest")
	return c
}

func (a *app) serialConsole(ctx context.Context, rt *runtime.Runtime, name string) error {
	conn, err := rt.AttachConsole(ctx, name)
	if err != nil {
		return err
	}
	defer conn.Close()
	fmt.Fprintf(a.stderr, "Connected to the serial console of %s (Ctrl-] to detach).\r\n", name)
	if term.IsTerminal(int(os.Stdin.Fd())) {
		old, err := term.MakeRaw(int(os.Stdin.Fd()))
		if err == nil {
			defer term.Restore(int(os.Stdin.Fd()), old)
		}
	}
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(a.stdout, conn)
		done <- struct{}{} // the VM stopped
	}()
	go func() {
		buf := make([]byte, 1024)
		for {
			n, err := os.Stdin.Read(buf)
			if n > 0 {
				chunk := buf[:n]
				if i := bytes.IndexByte(chunk, detachKey); i >= 0 {
					_, _ = conn.Write(chunk[:i])
					done <- struct{}{} // Ctrl-]
					return
				}
				if _, err := conn.Write(chunk); err != nil {
					return
				}
			}
			if err != nil {
				return // end of input: keep showing output until the VM stops
			}
		}
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	fmt.Fprint(a.stderr, "\r\nDetached.\r\n")
	return nil
}
