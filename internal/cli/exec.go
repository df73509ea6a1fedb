package cli

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/agent/client"
)

// Exit codes of exec for failures of its own, as docker uses them.
const (
	codeExecFailed = 125
)

func newExecCmd(a *app) *cobra.Command {
	var (
		interactive bool
		env         []string
		workdir     string
		timeout     time.Duration
	)
	c := &cobra.Command{
		Use:   "exec [flags] NAME -- COMMAND [ARG...]",
		Short: "Run a command in a running microVM; its stdout, stderr and exit code are passed through",
		Long: `exec runs a command in the guest through mvm-agent and exits with its exit code.
Failures of exec itself exit with 125, a command that is not found with 127 and one
that cannot be run with 126 (docker's convention); a command killed by a signal
exits with 128+signal.`,
		Example: `  mvmctl exec web -- uname -a
  mvmctl exec -e FOO=bar -w /tmp web -- sh -c 'echo $FOO; pwd'
  mvmctl exec -i web -- wc -c < file`,
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
			o := client.ExecOptions{Argv: argv, Env: env, Cwd: workdir, Timeout: timeout, Stdout: a.stdout, Stderr: a.stderr}
			if interactive {
				o.Stdin = os.Stdin
			}
			ex, err := rt.Exec(cmd.Context(), name, o)
			var se *client.StartError
			switch {
			case errors.As(err, &se):
				return &ExitError{Code: se.Code, Err: fmt.Errorf("exec in %s: %s", name, se.Message)}
			case err != nil:
				return &ExitError{Code: codeExecFailed, Err: err}
			}
			if ex.TimedOut {
				fmt.Fprintf(a.stderr, "mvmctl: the command %s\n", ex.Error)
			}
			if ex.Code != 0 {
				return &ExitError{Code: ex.Code}
			}
			return nil
		},
	}
	c.Flags().SetInterspersed(false)
	c.Flags().BoolVarP(&interactive, "interactive", "i", false, "send mvmctl's stdin to the command")
	c.Flags().StringArrayVarP(&env, "env", "e", nil, "set an environment variable, KEY=VALUE (repeatable)")
	c.Flags().StringVarP(&workdir, "workdir", "w", "", "working directory in the guest (default /)")
	c.Flags().DurationVar(&timeout, "timeout", 0, "kill the command after this long (exit 137), e.g. 30s")
	return c
}
