// Package cli is mvmctl's command line: thin cobra commands over the runtime.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/runtime"
	"github.com/mvm-dev/mvm/internal/ui"
)

// ExitError carries a specific exit code (exec passes the guest's through).
type ExitError struct {
	Code int
	Err  error // printed when not nil
}

func (e *ExitError) Error() string {
	if e.Err != nil {
		return e.Err.Error()
	}
	return fmt.Sprintf("exit status %d", e.Code)
}

func (e *ExitError) Unwrap() error { return e.Err }

type app struct {
	rootDir string
	debug   bool
	stdout  io.Writer
	stderr  io.Writer
}

func (a *app) log() *slog.Logger {
	if a.debug {
		return slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(&userHandler{w: a.stderr})
}

// userHandler prints warnings and errors as one readable line: "mvmctl: warning: ...".
type userHandler struct {
	w     io.Writer
	attrs []slog.Attr
}

func (h *userHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *userHandler) Handle(_ context.Context, r slog.Record) error {
	var sb strings.Builder
	fmt.Fprintf(&sb, "mvmctl: %s: %s", strings.ToLower(r.Level.String()), r.Message)
	add := func(at slog.Attr) bool {
		fmt.Fprintf(&sb, " %s=%v", at.Key, at.Value)
		return true
	}
	for _, at := range h.attrs {
		add(at)
	}
	r.Attrs(add)
	sb.WriteByte('\n')
	_, err := io.WriteString(h.w, sb.String())
	return err
}

func (h *userHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &userHandler{w: h.w, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *userHandler) WithGroup(string) slog.Handler { return h }

func (a *app) layout() (layout.Root, error) { return layout.New(a.rootDir) }

// runtime returns the engine, after repairing state left by crashed processes.
func (a *app) runtime() (*runtime.Runtime, error) {
	rt, err := a.bareRuntime()
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(rt.Root.Dir); err == nil {
		if err := rt.Reconcile(); err != nil {
			return nil, withRootHint(err)
		}
	}
	return rt, nil
}

// bareRuntime returns the engine without touching state (for validation first).
func (a *app) bareRuntime() (*runtime.Runtime, error) {
	root, err := a.layout()
	if err != nil {
		return nil, err
	}
	return runtime.New(root, a.log())
}

// withRootHint names the fix for the most common permission problem.
func withRootHint(err error) error {
	if errors.Is(err, os.ErrPermission) && os.Geteuid() != 0 {
		return fmt.Errorf("%w: run mvmctl as root (sudo), or use a --root you own", err)
	}
	return err
}

// NewRoot builds the mvmctl command tree.
func NewRoot() *cobra.Command {
	a := &app{stdout: os.Stdout, stderr: os.Stderr}
	defRoot := os.Getenv(layout.EnvRoot)
	if defRoot == "" {
		defRoot = layout.DefaultRoot
	}
	root := &cobra.Command{
		Use:   "mvmctl",
		Short: "Build microVM images and run them as isolated, headless microVMs",
		Long: `mvmctl boots small Linux microVMs on QEMU's microvm machine (KVM when usable,
software emulation otherwise) and runs commands in them through mvm-agent, the
guest's PID 1. There is no SSH: everything goes through the agent.

Start with:
  mvmctl bootstrap              # install host packages, fetch the kernel, build the image
  mvmctl up -d --name web       # boot a VM in the background
  mvmctl exec web -- uname -a   # run a command in it
  mvmctl down web               # stop and remove it`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&a.rootDir, "root", defRoot, "directory for state, images and runtime files (env "+layout.EnvRoot+")")
	root.PersistentFlags().BoolVar(&a.debug, "debug", false, "log debug details to stderr")
	root.AddCommand(
		newBootstrapCmd(a), newUpCmd(a), newExecCmd(a), newLsCmd(a), newLogsCmd(a), newConsoleCmd(a),
		newDownCmd(a), newCpCmd(a), newForwardCmd(a), newInspectCmd(a), newImageCmd(a), newDoctorCmd(a), newVersionCmd(a),
		newBenchCmd(a), newNetworkCmd(a), newSuperviseCmd(a),
		newPauseCmd(a), newResumeCmd(a), newSleepCmd(a), newWakeCmd(a), newSnapshotCmd(a), newTemplateCmd(a),
	)
	return root
}

// Main runs mvmctl and returns the process exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := NewRoot()
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		if ee.Err != nil {
			fmt.Fprintln(os.Stderr, "mvmctl:", ui.Printable(ee.Err.Error()))
		}
		return ee.Code
	}
	// Errors can carry text from the guest: print it defanged.
	fmt.Fprintln(os.Stderr, "mvmctl:", ui.Printable(withRootHint(err).Error()))
	return 1
}
