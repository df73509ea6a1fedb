package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/mvm-dev/mvm/internal/agent/client"
	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/runtime"
	"github.com/mvm-dev/mvm/internal/ui"
)

// codeExecFailed is exec's exit code for failures of its own, as docker uses it.
const codeExecFailed = 125

type execFlags struct {
	interactive bool
	tty         bool
	env         []string
	workdir     string
	user        string
	timeout     time.Duration
}

func newExecCmd(a *app) *cobra.Command {
	var f execFlags
	c := &cobra.Command{
		Use:   "exec [flags] NAME -- COMMAND [ARG...]",
		Short: "Run a command in a running microVM; its output streams back and its exit code passes through",
		Long: `exec runs a command in the guest through mvm-agent and exits with its exit code.
Output streams as it is produced. Failures of exec itself exit with 125, a command
that is not found with 127 and one that cannot be run with 126 (docker's convention);
a command killed by a signal exits with 128+signal. Without -t, Ctrl-C and other
signals are passed to the command; with -t the terminal is raw and keys go to the
guest's terminal, Ctrl-C included.`,
		Example: `  mvmctl exec web -- uname -a
  mvmctl exec -it web -- sh
  mvmctl exec -e FOO=bar -w /tmp -u nobody web -- sh -c 'echo $FOO; pwd; id'
  mvmctl exec -i web -- wc -c < file
  mvmctl exec --timeout 5s web -- sleep 60      # killed after 5s, exit 137`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, argv := args[0], args[1:]
			if len(argv) > 0 && argv[0] == "--" {
				argv = argv[1:]
			}
			if len(argv) == 0 {
				return &ExitError{Code: codeExecFailed, Err: errors.New("no command given: mvmctl exec NAME -- COMMAND [ARG...]")}
			}
			rt, err := a.runtime()
			if err != nil {
				return &ExitError{Code: codeExecFailed, Err: err}
			}
			return a.runExec(cmd.Context(), rt, name, argv, f)
		},
	}
	c.Flags().SetInterspersed(false)
	c.Flags().BoolVarP(&f.interactive, "interactive", "i", false, "send mvmctl's stdin to the command")
	c.Flags().BoolVarP(&f.tty, "tty", "t", false, "run the command on a pseudo-terminal (with -i: an interactive session)")
	c.Flags().StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable, KEY=VALUE (repeatable)")
	c.Flags().StringVarP(&f.workdir, "workdir", "w", "", "working directory in the guest (default /)")
	c.Flags().StringVarP(&f.user, "user", "u", "", "run as this user: name, uid, name:group or uid:gid (default root)")
	c.Flags().DurationVar(&f.timeout, "timeout", 0, "kill the command after this long (exit 137), e.g. 30s")
	return c
}

// runExec runs one command and turns its end into mvmctl's exit.
func (a *app) runExec(parent context.Context, rt *runtime.Runtime, name string, argv []string, f execFlags) error {
	// Signals go to the guest command rather than cancelling us; the connection
	// closing (mvmctl killed) still hangs the command up.
	ctx := context.WithoutCancel(parent)
	o := client.ExecOptions{Argv: argv, Env: f.env, Cwd: f.workdir, User: f.user, Timeout: f.timeout,
		Stdout: a.stdout, Stderr: a.stderr, TTY: f.tty}
	if f.interactive {
		o.Stdin = os.Stdin
	}
	inFd, outFd := int(os.Stdin.Fd()), int(os.Stdout.Fd())
	if f.tty {
		if !term.IsTerminal(outFd) && !term.IsTerminal(inFd) {
			fmt.Fprintln(a.stderr, "mvmctl: note: -t without a terminal; output is the guest terminal's")
		}
		if w, h, err := term.GetSize(outFd); err == nil {
			o.Cols, o.Rows = uint16(w), uint16(h)
		}
		if f.interactive && term.IsTerminal(inFd) {
			if old, err := term.MakeRaw(inFd); err == nil {
				defer term.Restore(inFd, old)
			}
		}
		resize := make(chan proto.Resize, 1)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if w, h, err := term.GetSize(outFd); err == nil {
					select {
					case resize <- proto.Resize{Rows: uint16(h), Cols: uint16(w)}:
					default:
					}
				}
			}
		}()
		o.Resize = resize
	}
	// Signals sent to mvmctl go to the command. In raw mode Ctrl-C is a key the guest's
	// terminal turns into SIGINT itself; a signal from elsewhere (kill) is still passed on.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	fwd := make(chan int, 4)
	go func() {
		for s := range sigs {
			fwd <- int(s.(syscall.Signal))
		}
	}()
	o.Signals = fwd
	ex, err := rt.Exec(ctx, name, o)
	var se *client.StartError
	switch {
	case errors.As(err, &se):
		return &ExitError{Code: se.Code, Err: fmt.Errorf("exec in %s: %s", name, ui.Printable(se.Message))}
	case err != nil:
		return &ExitError{Code: codeExecFailed, Err: err}
	}
	if ex.TimedOut {
		fmt.Fprintf(a.stderr, "mvmctl: the command %s\n", ui.Printable(ex.Error))
	}
	if ex.Code != 0 {
		return &ExitError{Code: ex.Code}
	}
	return nil
}
