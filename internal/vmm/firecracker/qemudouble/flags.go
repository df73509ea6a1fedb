package qemudouble

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// flags are the command line, as far as the double uses it.
type flags struct {
	apiSock string
	id      string
	level   slog.Level
	// chroot is --mvm-test-chroot: the jail's root directory when the jailer
	// test double started this one (see ChrootFlag); empty otherwise.
	chroot string
}

// ChrootFlag is the test-only flag with which the jailer test double (see
// RunJailer) hands this double the chroot it built but did not enter:
// --mvm-test-chroot <dir>. The double then emulates the chroot: the API
// socket and every path given over the API resolve inside dir, as a jailed
// Firecracker's paths resolve inside its chroot (fakefc.Resolve). Firecracker
// has no such flag; nothing but the jailer double passes it.
const ChrootFlag = "mvm-test-chroot"

// defaultID is Firecracker's instance id when --id is not given.
const defaultID = "anonymous-instance"

// parseArgs reads Firecracker's command line. It returns done when the
// program should exit at once with code: --version, --help, or a command
// line Firecracker would refuse (exit 1).
func parseArgs(args []string, stdout, stderr io.Writer) (f flags, code int, done bool) {
	fs := flag.NewFlagSet("firecracker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	apiSock := fs.String("api-sock", "", "path of the API socket (required)")
	id := fs.String("id", defaultID, "MicroVM unique identifier")
	version := fs.Bool("version", false, "print the version and exit")
	level := fs.String("level", "", "log level (Error, Warning, Info, Debug, Trace, Off)")
	// Accepted so a caller's usual command line works; they change nothing
	// here (the double logs to stderr, has no seccomp filters, and its
	// devices are QEMU's).
	fs.String("log-path", "", "accepted and ignored by the test double")
	fs.Bool("enable-pci", false, "accepted and ignored by the test double")
	fs.Bool("no-seccomp", false, "accepted and ignored by the test double")
	fs.Bool("boot-timer", false, "accepted and ignored by the test double")
	// The jailer passes its timing to Firecracker, which only reports it.
	fs.Uint64("start-time-us", 0, "accepted and ignored by the test double (the jailer passes it)")
	fs.Uint64("start-time-cpu-us", 0, "accepted and ignored by the test double (the jailer passes it)")
	fs.Uint64("parent-cpu-time-us", 0, "accepted and ignored by the test double (the jailer passes it)")
	chroot := fs.String(ChrootFlag, "", "test only, set by the jailer test double: emulate its chroot at this directory")
	// Firecracker refuses an argument given twice: the jailer passes --id
	// itself, so a caller passing it again after "--" must fail here too.
	refuseRepeats(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "firecracker v%s\n%s\n\n", Version, Marker)
		printFlags(fs.Output(), fs)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return flags{}, 0, true
		}
		return flags{}, 1, true // the flag package has said why
	}
	if *version {
		fmt.Fprintf(stdout, "Firecracker v%s\n%s\n", Version, Marker)
		return flags{}, 0, true
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "firecracker: unexpected argument %q\n", fs.Arg(0))
		return flags{}, 1, true
	}
	if *apiSock == "" {
		fmt.Fprintln(stderr, "firecracker: --api-sock is required by the test double")
		return flags{}, 1, true
	}
	if !validID(*id) {
		fmt.Fprintf(stderr, "firecracker: invalid instance id %q: 1 to 64 letters, digits and '-'\n", *id)
		return flags{}, 1, true
	}
	lvl, err := logLevel(*level)
	if err != nil {
		fmt.Fprintf(stderr, "firecracker: %v\n", err)
		return flags{}, 1, true
	}
	if *chroot != "" {
		if err := checkChroot(*chroot); err != nil {
			fmt.Fprintf(stderr, "firecracker: --%s: %v\n", ChrootFlag, err)
			return flags{}, 1, true
		}
	}
	return flags{apiSock: *apiSock, id: *id, level: lvl, chroot: *chroot}, 0, false
}

// checkChroot accepts the directory of --mvm-test-chroot: an absolute path
// of a directory that is also the working directory, as the jailer starts
// Firecracker in its chroot's "/". Relative paths then mean the same to the
// double's own file operations and to the chroot it emulates.
func checkChroot(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("%q is not an absolute path", dir)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	cwd, err := os.Getwd()
	if err != nil {
		return fmt.Errorf("working directory: %w", err)
	}
	if cwd, err = filepath.EvalSymlinks(cwd); err != nil {
		return fmt.Errorf("working directory: %w", err)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return err
	}
	if real != cwd {
		return fmt.Errorf("the working directory is %s, not %s: a jailed Firecracker starts in its chroot's /", cwd, dir)
	}
	return nil
}

// validID follows Firecracker's rule for --id.
func validID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if r != '-' && (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') && (r < '0' || r > '9') {
			return false
		}
	}
	return true
}

// logLevel maps Firecracker's levels onto slog's. Off keeps only errors:
// the double's own failures are still worth a line.
func logLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "", "info":
		return slog.LevelInfo, nil
	case "error", "off":
		return slog.LevelError, nil
	case "warning", "warn":
		return slog.LevelWarn, nil
	case "debug", "trace":
		return slog.LevelDebug, nil
	}
	return 0, fmt.Errorf("invalid --level %q: want Error, Warning, Info, Debug, Trace or Off", s)
}

// refuseRepeats makes every flag of fs but the repeatable ones fail when it
// is given twice, as the argument parser of Firecracker and its jailer does
// (the flag package would keep the last value).
func refuseRepeats(fs *flag.FlagSet, repeatable ...string) {
	fs.VisitAll(func(f *flag.Flag) {
		if slices.Contains(repeatable, f.Name) {
			return
		}
		o := once{Value: f.Value, name: f.Name}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			f.Value = &onceBool{o}
			return
		}
		f.Value = &o
	})
}

// once is a flag value that may be set once.
type once struct {
	flag.Value
	name string
	set  bool
}

func (o *once) Set(s string) error {
	if o.set {
		return fmt.Errorf("the argument '%s' was provided more than once", o.name)
	}
	o.set = true
	return o.Value.Set(s)
}

// String is safe on the zero value, which the flag package makes to tell
// whether a default is worth printing.
func (o *once) String() string {
	if o == nil || o.Value == nil {
		return ""
	}
	return o.Value.String()
}

// onceBool is once for a flag that takes no value.
type onceBool struct{ once }

func (*onceBool) IsBoolFlag() bool { return true }

// printFlags lists fs's flags as --name <value>, with their defaults. It
// stands in for flag.PrintDefaults, which cannot name the type or the
// default of a flag wrapped by refuseRepeats.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		arg := " <value>"
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			arg = ""
		}
		fmt.Fprintf(w, "  --%s%s\n    \t%s", f.Name, arg, f.Usage)
		if arg != "" && f.DefValue != "" {
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}
