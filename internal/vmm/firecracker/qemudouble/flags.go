package qemudouble

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// flags are the command line, as far as the double uses it.
type flags struct {
	apiSock string
	id      string
	level   slog.Level
}

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
	return flags{apiSock: *apiSock, id: *id, level: lvl}, 0, false
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
