package cli

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/ui"
	"github.com/mvm-dev/mvm/internal/vm"
)

// cpArg is one side of `mvmctl cp`: a host path or VM:PATH.
type cpArg struct {
	vm   string
	path string
}

// parseCpArg reads "NAME:PATH" as a guest path when NAME is a valid VM name (so
// "./a:b" and "/tmp/x:y" stay host paths, as with docker cp).
func parseCpArg(s string) cpArg {
	if i := strings.IndexByte(s, ':'); i > 0 && vm.ValidateName(s[:i]) == nil {
		p := s[i+1:]
		if p == "" {
			p = "/"
		}
		if !path.IsAbs(p) {
			p = "/" + p // relative to the guest's root, the agent's working directory
		}
		return cpArg{vm: s[:i], path: p}
	}
	return cpArg{path: s}
}

func newCpCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DEST",
		Short: "Copy files and directories between the host and a microVM, both ways (docker cp semantics)",
		Long: `cp copies a file or directory between the host and a running microVM through its
agent, as 'docker cp' does: one side is NAME:PATH. Modes, times and symlinks are
kept (links are copied, never followed); a directory ending in '/.' copies its
contents. A missing destination is created (its parent must exist); an existing
directory receives the source inside it. Paths that would escape the destination
(.., absolute links) are refused. The stream carries an XXH64 digest checked at the end.
Files copied to the host belong to the user running mvmctl, without setuid/setgid.`,
		Example: `  mvmctl cp ./site web:/srv/site
  mvmctl cp web:/var/log/messages .
  mvmctl cp ./dir/. web:/srv          # the contents of dir into /srv`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, dst := parseCpArg(args[0]), parseCpArg(args[1])
			switch {
			case src.vm != "" && dst.vm != "":
				return errors.New("copying between two VMs is not supported: copy to the host first")
			case src.vm == "" && dst.vm == "":
				return errors.New("one side must be NAME:PATH (a VM), e.g. mvmctl cp ./file web:/tmp/")
			}
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			name := src.vm + dst.vm
			cl, err := rt.Agent(name)
			if err != nil {
				return err
			}
			start := time.Now()
			if src.vm != "" {
				res, err := cl.CopyOut(cmd.Context(), src.path, dst.path)
				if err != nil {
					return err
				}
				a.cpSkipped(res.Skipped)
				a.cpSummary(res.Entries, res.Bytes, time.Since(start))
				return nil
			}
			res, err := cl.CopyIn(cmd.Context(), src.path, dst.path)
			if err != nil {
				return err
			}
			a.cpSkipped(res.Skipped)
			a.cpSummary(res.Entries, res.Bytes, time.Since(start))
			return nil
		},
	}
}

// cpSkipped lists entries left out. Names from a guest are escaped: they must not be
// able to send the terminal escape sequences or forge lines.
func (a *app) cpSkipped(names []string) {
	for _, s := range names {
		fmt.Fprintf(a.stderr, "mvmctl: skipped %s (not a file, directory or symlink)\n", ui.PrintableLine(s))
	}
}

func (a *app) cpSummary(entries int, bytes int64, d time.Duration) {
	rate := ""
	if d > 0 && bytes > 1<<20 {
		rate = fmt.Sprintf(", %.1f MiB/s", float64(bytes)/(1<<20)/d.Seconds())
	}
	fmt.Fprintf(a.stderr, "Copied %d entries, %s in %.2fs%s\n", entries, vm.FormatBytes(bytes), d.Seconds(), rate)
}
