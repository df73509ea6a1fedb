package cli

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// detachKey is Ctrl-], as in telnet and virsh console.
const detachKey = 0x1d

func newConsoleCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "console NAME",
		Short: "Attach to a microVM's serial console (Ctrl-] detaches)",
		Long: `console attaches the terminal to the guest's serial console (ttyS0): its output
appears as it comes and keystrokes go to the guest. The default image runs no login
on the console (mvm-agent is PID 1; use 'mvmctl exec'), so this is mostly for
watching kernel and agent messages. Ctrl-] detaches and leaves the VM running.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			conn, err := rt.AttachConsole(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer conn.Close()
			fmt.Fprintf(a.stderr, "Connected to the serial console of %s (Ctrl-] to detach).\r\n", args[0])
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
			case <-cmd.Context().Done():
			}
			fmt.Fprint(a.stderr, "\r\nDetached.\r\n")
			return nil
		},
	}
}
