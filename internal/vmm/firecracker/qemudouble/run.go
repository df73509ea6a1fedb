package qemudouble

import (
	"context"
	"io"
	"os"
	"time"

	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fakefc"
)

// consoleDrain bounds the wait for the console's last output once QEMU has
// exited (it ends as soon as QEMU's side of the console is closed).
const consoleDrain = 2 * time.Second

// Run is the firecracker program: it parses args, serves the API on
// --api-sock and runs the guest on QEMU until QEMU exits, a snapshot load
// fails, or ctx ends. The console is stdin and stdout; the double's own log
// and QEMU's diagnostics go to stderr.
//
// It returns the exit status: 0 when the guest powered off or rebooted (as
// Firecracker exits 0 then), 1 when QEMU failed, a load failed or the
// command line was refused, and 1 when ctx ended (the program then dies of
// the signal that ended it, as Firecracker would). QEMU never outlives Run.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	f, code, done := parseArgs(args, stdout, stderr)
	if done {
		return code
	}
	log := newLogger(stderr, f.level, f.id)
	// Firecracker opens relative paths against its working directory.
	cwd, err := os.Getwd()
	if err != nil {
		log.Error("working directory", "err", err)
		return 1
	}
	// Every path the double opens or binds goes through resolve: the API
	// socket here, the TAP's /dev/net/tun in the machine, and what the API
	// is given in the fake, which hands the machine resolved paths. Under the
	// jailer double they all lie in its chroot.
	resolve := func(p string) string { return fakefc.Resolve(f.chroot, cwd, p) }
	opts := []fakefc.Option{fakefc.WithInstanceID(f.id), fakefc.WithVersion(Version), fakefc.WithWorkDir(cwd)}
	if f.chroot != "" {
		opts = append(opts, fakefc.WithRoot(f.chroot))
		log.Info("emulating the jailer's chroot: every path resolves inside it", "chroot", f.chroot)
	}
	apiSock := resolve(f.apiSock)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m := newMachine(ctx, f.id, stdin, stdout, stderr, log, resolve(tunDevice))
	defer m.shutdown()
	srv, err := fakefc.NewServer(append(opts, fakefc.WithSocketPath(apiSock), fakefc.WithMachine(m),
		fakefc.WithRequestLog(logRequest(log)))...)
	if err != nil {
		log.Error("API socket", "path", apiSock, "err", err)
		return 1
	}
	defer srv.Close()
	log.Info("test double serving the Firecracker API; QEMU runs the guest, this is not Firecracker",
		"api_sock", apiSock, "version", Version)

	select {
	case <-ctx.Done():
		log.Info("stopping: asked to")
		return 1
	case <-srv.Ended():
		log.Error("exiting after a failed snapshot load")
		return 1
	case <-m.Exited():
	}
	select {
	case <-m.consoleDone:
	case <-time.After(consoleDrain):
	}
	if e := m.ExitInfo(); e.Code != 0 {
		log.Error("QEMU failed", "code", e.Code, "reason", e.Reason)
		return 1
	}
	return 0
}
