// Package firecracker runs microVMs on Firecracker, driven through its REST API
// (internal/vmm/firecracker/fcapi). It implements vmm.Backend and vmm.Instance.
//
// Firecracker differs from QEMU in ways the boundary shows: it opens the TAP
// device by name itself, its serial console is its stdin/stdout, the guest agent
// is reached over hybrid vsock (a Unix socket), and snapshots are pairs of files
// (state and memory) rather than a stream.
package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/mvm-dev/mvm/internal/fcinstall"
	"github.com/mvm-dev/mvm/internal/vmm"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fcapi"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

// Binary is the Firecracker executable mvm drives.
const Binary = "firecracker"

// Files Firecracker makes in a VM's directory.
const (
	APISocketName = "api.sock"
	VsockName     = "vsock.sock"
	LogName       = "firecracker.log"
)

// GuestCID is the guest's vsock context id. With hybrid vsock every VM has its
// own host socket, so all of them can use the first id that is not reserved.
const GuestCID = 3

// ifaceID names the single NIC; snapshot network overrides refer to it.
const ifaceID = "eth0"

// consoleArgs are the kernel arguments Firecracker's guests need: the serial
// console Firecracker emulates, a reboot through the i8042 controller (which
// makes Firecracker exit), a panic that reboots and so also ends it, and
// mvm-agent's power-off done as a reboot (Firecracker has no power management,
// so a guest that powers off would leave it running).
const consoleArgs = "console=ttyS0 reboot=k panic=1 mvm.poweroff=reboot"

// startTimeout bounds the wait for the API socket: Firecracker answers within
// tens of milliseconds, so a long wait means it is stuck.
const startTimeout = 10 * time.Second

// maxSocketPath is the longest path a Unix socket can have (sun_path is 108
// bytes with the NUL).
const maxSocketPath = 107

var (
	// ErrNotFound is returned by New when there is no firecracker binary.
	ErrNotFound = errors.New("firecracker not found: put the firecracker binary (1.13 or later, from https://github.com/firecracker-microvm/firecracker/releases) on PATH")
	// ErrNoKVM is returned by New when KVM is not usable: Firecracker has no
	// software emulation to fall back on.
	ErrNoKVM = errors.New("firecracker needs KVM, which is not usable here")
	// ErrStreamSnapshot is returned by SaveState and by Start with
	// Config.RestoreFrom: Firecracker snapshots are files.
	ErrStreamSnapshot = errors.New("firecracker snapshots are files, not a stream: use Instance.CreateSnapshot and Backend.StartFromSnapshot")
)

// Options configures the backend.
type Options struct {
	// Binary is the firecracker executable: a path, or a name looked up on
	// PATH. Empty means BinDir/firecracker if it is there, else "firecracker"
	// on PATH.
	Binary string
	// BinDir is mvm's own program directory (<root>/bin), where `mvmctl
	// bootstrap --firecracker` installs the release it pins and verifies; it
	// comes before PATH so that release is the one used.
	BinDir string
	// RunDir holds one directory per VM (RunDir/<Config.Name>) with the API
	// socket, the vsock socket and the log, when Start is used. StartVM can name
	// the directory itself.
	RunDir string
	// Jailer, when set, runs every VM under Firecracker's jailer (chroot,
	// uid/gid switch, cgroup v2 limits) instead of running firecracker
	// directly; VMOptions.Jailer overrides it per VM. See jailer.go.
	Jailer *Jailer

	// TestDouble accepts mvm's QEMU-backed Firecracker test double
	// (internal/vmm/firecracker/qemudouble) as the binary, for tests of
	// everything above the backend on hosts without Firecracker: the KVM check
	// is skipped, since the double emulates with TCG where KVM is not usable.
	// The binary must name itself the double in its --version output, so a real
	// Firecracker is never started without KVM. See HostOptions.
	TestDouble bool

	// detect probes the host for KVM; nil means qemu.DetectAccel. Tests set it.
	detect func() qemu.Accel
}

// EnvTestDouble, set to 1, makes HostOptions accept the test double. Only the
// test suite sets it.
const EnvTestDouble = "MVM_FIRECRACKER_TEST_DOUBLE"

// TestDoubleMarker is what the test double prints in its --version output.
const TestDoubleMarker = "mvm-test-double"

// HostOptions are the options mvm runs Firecracker with: the binary from
// binDir (where bootstrap installs it) or PATH, and the test double only when
// EnvTestDouble asks for it.
func HostOptions(binDir string) Options {
	return Options{BinDir: binDir, TestDouble: os.Getenv(EnvTestDouble) == "1"}
}

// VMOptions are the per-VM settings vmm.Config has no room for.
type VMOptions struct {
	// Dir is the VM's directory for the API socket, the vsock socket and the
	// log. Empty means Options.RunDir/<Config.Name>.
	Dir string
	// TAPName is the host name of the VM's TAP device. Firecracker opens the
	// TAP by name, so the descriptor in Config.TAP is not handed over. Empty
	// means the name is asked of the kernel for Config.TAP. Note that a TAP
	// that is not multi-queue accepts one open descriptor only, so the caller
	// must close its own before Firecracker can attach.
	TAPName string
	// LogPath is where Firecracker logs; empty means Dir/firecracker.log. Its
	// default log target is stdout, which is the guest's console here.
	LogPath string
	// LogLevel is Firecracker's log level (Error, Warning, Info, Debug, Trace,
	// Off); empty leaves Firecracker's default.
	LogLevel string
	// Restore, when set, loads this snapshot instead of booting.
	Restore *Snapshot
	// Jailer, when set, overrides Options.Jailer for this VM (a uid of its
	// own, say). Under the jailer Dir is not used: the VM lives in its chroot.
	Jailer *Jailer
}

// Snapshot is a Firecracker snapshot: the device state and guest memory files
// written by Instance.CreateSnapshot.
type Snapshot struct {
	StatePath string
	MemPath   string
	// VsockPath is the uds_path of the VM the snapshot was made of: Firecracker
	// 1.13 binds that path again on load (it has no vsock override), so it must
	// be free. Empty means the new VM's Dir/vsock.sock, i.e. the snapshot was
	// made of a VM that lived in the same directory.
	VsockPath string
}

// Backend runs VMs with Firecracker.
type Backend struct {
	binary string
	opts   Options
	accel  string
	// release is what the binary's --version said (1.13.1), read once by New.
	release string
	// launch starts a firecracker process; tests replace it with a fake.
	launch launchFunc
}

var _ vmm.Backend = (*Backend)(nil)

// New finds the firecracker binary and checks that KVM is usable, and says how
// to fix it when either is missing.
func New(opts Options) (*Backend, error) {
	bin, err := lookupBinary(opts)
	if err != nil {
		return nil, err
	}
	detect := opts.detect
	if detect == nil {
		detect = qemu.DetectAccel
	}
	if opts.TestDouble {
		out, err := versionOutput(bin)
		if err != nil || !isTestDouble(out) {
			return nil, fmt.Errorf("%s=1 but %s is not mvm's test double (no %q in its --version): a real Firecracker needs KVM", EnvTestDouble, bin, TestDoubleMarker)
		}
		rel, _ := ParseRelease(out)
		return &Backend{binary: bin, opts: opts, launch: execLaunch, accel: detect().Name, release: rel}, nil
	}
	if a := detect(); a.Name != "kvm" {
		reason := a.Reason
		if reason == "" {
			reason = "acceleration is " + a.Name
		}
		return nil, fmt.Errorf("%w: %s", ErrNoKVM, reason)
	}
	out, err := versionOutput(bin)
	if err == nil && isTestDouble(out) {
		// Left on PATH or in the bin directory, it would run VMs on QEMU as if it
		// were Firecracker, and jail nothing.
		return nil, fmt.Errorf("%s is mvm's test double, not Firecracker: remove it and install Firecracker with `mvmctl bootstrap --firecracker`", bin)
	}
	rel, _ := ParseRelease(out) // a failed --version is said by BinaryVersion
	return &Backend{binary: bin, opts: opts, launch: execLaunch, accel: "kvm", release: rel}, nil
}

// lookupBinary finds the firecracker binary opts name.
func lookupBinary(opts Options) (string, error) {
	var bin string
	var err error
	if opts.Binary != "" {
		bin, err = exec.LookPath(opts.Binary)
	} else {
		bin, err = fcinstall.Lookup(opts.BinDir, Binary) // where bootstrap --firecracker puts it, then PATH
	}
	switch {
	case err == nil:
		return bin, nil
	case opts.Binary != "":
		return "", fmt.Errorf("%w (%s: %w)", ErrNotFound, opts.Binary, err)
	case opts.BinDir != "":
		return "", fmt.Errorf("%w, or install it into %s with `mvmctl bootstrap --firecracker`", ErrNotFound, opts.BinDir)
	}
	return "", ErrNotFound
}

// ForCleanup is a Backend that only ends and removes what VMs left in their
// jails (KillJail, RemoveJail): it finds the binary as New does, since the
// jail's path and cgroup are named after it, but checks neither KVM nor the
// binary's kind, because it starts nothing.
func ForCleanup(opts Options) (*Backend, error) {
	bin, err := lookupBinary(opts)
	if err != nil {
		return nil, err
	}
	return &Backend{binary: bin, opts: opts, launch: func(launchSpec) (process, error) {
		return nil, errors.New("firecracker: a cleanup backend starts nothing")
	}}, nil
}

// IsTestDouble says whether the program at path (firecracker or jailer) is one
// of mvm's test doubles, as its --version output declares.
func IsTestDouble(path string) bool {
	out, err := versionOutput(path)
	return err == nil && isTestDouble(out)
}

func isTestDouble(versionOut []byte) bool {
	return strings.Contains(string(versionOut), TestDoubleMarker)
}

// versionTimeout bounds a program's --version.
const versionTimeout = 10 * time.Second

// versionOutput runs path --version.
func versionOutput(path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), versionTimeout)
	defer cancel()
	return exec.CommandContext(ctx, path, "--version").Output()
}

// Name implements vmm.Backend.
func (b *Backend) Name() string { return "firecracker" }

// Accel implements vmm.Backend: Firecracker only runs on KVM (the test double
// reports what it emulates with).
func (b *Backend) Accel() string {
	if b.accel == "" {
		return "kvm"
	}
	return b.accel
}

// releaseRE finds the release in a Firecracker program's --version output
// ("Firecracker v1.13.1", "Jailer v1.13.1").
var releaseRE = regexp.MustCompile(`v?([0-9]+\.[0-9]+\.[0-9]+)`)

// ParseRelease finds the release ("1.13.1") in the --version output of
// firecracker or jailer.
func ParseRelease(out []byte) (string, bool) {
	m := releaseRE.FindSubmatch(out)
	if m == nil {
		return "", false
	}
	return string(m[1]), true
}

// BinaryVersion is the release of the firecracker binary in use, as its API's
// GET /version reports it (1.13.1), which is what snapshots record.
func (b *Backend) BinaryVersion(ctx context.Context) (string, error) {
	if b.release != "" {
		return b.release, nil
	}
	out, err := exec.CommandContext(ctx, b.binary, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", b.binary, err)
	}
	rel, ok := ParseRelease(out)
	if !ok {
		return "", fmt.Errorf("%s --version: no version in %q", b.binary, strings.TrimSpace(string(out)))
	}
	return rel, nil
}

// IsTestDouble says the binary is mvm's QEMU-backed test double.
func (b *Backend) IsTestDouble() bool { return b.opts.TestDouble }

// BinaryPath is the firecracker executable in use.
func (b *Backend) BinaryPath() string { return b.binary }

// Start implements vmm.Backend with default VMOptions: the VM lives in
// Options.RunDir/<Config.Name> and its TAP name is asked of the kernel.
func (b *Backend) Start(ctx context.Context, cfg vmm.Config) (vmm.Instance, error) {
	inst, err := b.StartVM(ctx, cfg, VMOptions{})
	if err != nil {
		return nil, err
	}
	return inst, nil
}

// StartFromSnapshot starts a fresh Firecracker and loads snap into it instead of
// booting. The VM is left paused (Resume runs it), as vmm.Config.RestoreFrom
// promises for other backends. cfg must describe the same machine; only its
// TAP (through a network override) and Stderr are used.
func (b *Backend) StartFromSnapshot(ctx context.Context, cfg vmm.Config, vm VMOptions, snap Snapshot) (*Instance, error) {
	vm.Restore = &snap
	return b.StartVM(ctx, cfg, vm)
}

// StartVM launches Firecracker, waits for its API and either configures and
// boots the VM or, with vm.Restore, loads a snapshot.
func (b *Backend) StartVM(ctx context.Context, cfg vmm.Config, vm VMOptions) (*Instance, error) {
	if cfg.RestoreFrom != nil {
		return nil, ErrStreamSnapshot
	}
	if len(cfg.ExtraPorts) > 0 {
		return nil, fmt.Errorf("firecracker has no virtio-serial ports; cannot give %s", strings.Join(cfg.ExtraPorts, ", "))
	}
	if j := b.jailerFor(vm); j != nil {
		return b.startJailed(ctx, cfg, vm, *j)
	}
	dir := vm.Dir
	if dir == "" {
		if b.opts.RunDir == "" || cfg.Name == "" {
			return nil, errors.New("firecracker: no VM directory: set Options.RunDir and Config.Name, or VMOptions.Dir")
		}
		dir = filepath.Join(b.opts.RunDir, cfg.Name)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("firecracker: VM directory: %w", err)
	}
	apiSock := filepath.Join(dir, APISocketName)
	// Firecracker runs in dir and is given the vsock socket and the drives inside
	// dir as relative paths. A snapshot records them as given, and Firecracker
	// opens them again on load relative to the loading process's directory: a
	// clone restored in its own directory binds its own socket and opens its own
	// disks, where absolute paths would reach for the original VM's.
	vsockFC := VsockName
	if vm.Restore != nil && vm.Restore.VsockPath != "" {
		vsockFC = vm.Restore.VsockPath
	}
	vsock := vsockFC
	if !filepath.IsAbs(vsock) {
		vsock = filepath.Join(dir, vsock)
	}
	for _, p := range []string{apiSock, vsock} {
		if len(p) > maxSocketPath {
			return nil, fmt.Errorf("firecracker: socket path %s is longer than %d bytes", p, maxSocketPath)
		}
	}
	tap := vm.TAPName
	if tap == "" && cfg.TAP != nil {
		if tap, err = tapName(cfg.TAP); err != nil {
			return nil, err
		}
	}
	logPath := vm.LogPath
	if logPath == "" {
		logPath = filepath.Join(dir, LogName)
	}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("firecracker: %w", err)
	}
	// Firecracker refuses to bind a path that exists; a socket left by an
	// earlier process in this directory is stale. Only our directory is
	// cleaned: a restore's vsock path elsewhere may belong to a live VM.
	for _, p := range []string{apiSock, vsock} {
		if filepath.Dir(p) == dir {
			if err := removeStaleSocket(p); err != nil {
				return nil, err
			}
		}
	}
	// Firecracker's log_path must exist before PUT /logger in older releases.
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("firecracker: log file: %w", err)
	}
	logFile.Close()

	theirs, console, err := socketPair()
	if err != nil {
		return nil, err
	}
	proc, err := b.launch(launchSpec{Binary: b.binary, APISocket: apiSock, ID: instanceID(cfg.Name),
		Console: theirs, Stderr: cfg.Stderr, Dir: dir})
	theirs.Close() // the process has its own copy
	if err != nil {
		console.Close()
		return nil, err
	}
	cfg.Drives = relativeTo(dir, cfg.Drives)
	inst := &Instance{proc: proc, api: fcapi.New(apiSock), console: console, vsock: vsock, vsockFC: vsockFC, dir: dir}
	fail := func(err error) (*Instance, error) {
		// Clean up even when ctx has ended; SIGKILL takes effect promptly.
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = inst.Kill(kctx)
		inst.api.Close()
		console.Close()
		return nil, err
	}
	if err := inst.waitAPI(ctx); err != nil {
		return fail(err)
	}
	logger := fcapi.Logger{LogPath: logPath, Level: vm.LogLevel}
	if vm.Restore != nil {
		err = inst.load(ctx, logger, *vm.Restore, tap)
	} else {
		err = inst.boot(ctx, cfg, logger, tap)
	}
	if err != nil {
		return fail(err)
	}
	return inst, nil
}

// waitAPI waits for the API socket to answer, and gives up as soon as the
// process has exited rather than when the timeout ends.
func (i *Instance) waitAPI(ctx context.Context) error {
	wctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	go func() {
		select {
		case <-i.proc.Done():
			cancel()
		case <-wctx.Done():
		}
	}()
	if _, err := i.api.WaitReady(wctx); err != nil {
		select {
		case <-i.proc.Done():
			return fmt.Errorf("firecracker exited (%s) before its API socket answered; see its stderr",
				exitStatus(i.proc.ExitCode()))
		default:
		}
		return fmt.Errorf("firecracker API did not come up: %w", err)
	}
	return nil
}

// boot configures the VM in the order Firecracker documents and starts it.
func (i *Instance) boot(ctx context.Context, cfg vmm.Config, logger fcapi.Logger, tap string) error {
	steps := []struct {
		what string
		do   func() error
	}{
		{"logger", func() error { return i.api.PutLogger(ctx, logger) }},
		{"machine config", func() error {
			return i.api.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: cfg.CPUs, MemSizeMiB: int(cfg.MemoryMiB)})
		}},
		{"boot source", func() error {
			return i.api.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: cfg.Kernel, InitrdPath: cfg.Initrd,
				BootArgs: bootArgs(cfg.KernelArgs)})
		}},
		{"drives", func() error {
			for _, d := range drives(cfg.Drives) {
				if err := i.api.PutDrive(ctx, d); err != nil {
					return err
				}
			}
			return nil
		}},
		{"network interface", func() error {
			if tap == "" {
				return nil
			}
			return i.api.PutNetworkInterface(ctx, fcapi.NetworkInterface{IfaceID: ifaceID, HostDevName: tap, GuestMAC: cfg.MAC})
		}},
		{"vsock", func() error {
			uds := i.vsockFC
			if uds == "" {
				uds = i.fcPath(i.vsock)
			}
			return i.api.PutVsock(ctx, fcapi.Vsock{GuestCID: GuestCID, UDSPath: uds})
		}},
		{"entropy device", func() error { return i.api.PutEntropy(ctx, fcapi.Entropy{}) }},
		{"instance start", func() error { return i.api.InstanceStart(ctx) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("firecracker %s: %w", s.what, err)
		}
	}
	return nil
}

// load restores a snapshot into the fresh process, leaving the VM paused.
func (i *Instance) load(ctx context.Context, logger fcapi.Logger, snap Snapshot, tap string) error {
	if err := i.api.PutLogger(ctx, logger); err != nil {
		return fmt.Errorf("firecracker logger: %w", err)
	}
	req := fcapi.SnapshotLoad{
		SnapshotPath: snap.StatePath,
		MemBackend:   fcapi.MemoryBackend{BackendType: fcapi.BackendFile, BackendPath: snap.MemPath},
		// Paused, so the caller can finish setting up (network, agent) before
		// the guest runs, as with other backends' restores.
		ResumeVM: false,
	}
	if tap != "" {
		// The clone gets its own TAP; the snapshot names the original's.
		req.NetworkOverrides = []fcapi.NetworkOverride{{IfaceID: ifaceID, HostDevName: tap}}
	}
	if err := i.api.LoadSnapshot(ctx, req); err != nil {
		return fmt.Errorf("firecracker snapshot load: %w", err)
	}
	return nil
}

// bootArgs appends Firecracker's own arguments to the guest contract's,
// leaving out any the contract already has.
func bootArgs(contract []string) string {
	args := slices.Clone(contract)
	for _, a := range strings.Fields(consoleArgs) {
		if !slices.Contains(args, a) {
			args = append(args, a)
		}
	}
	return strings.Join(args, " ")
}

// drives maps the contract's drives to Firecracker's. The guest names virtio
// block devices in the order they are configured, so ids follow the position
// (vda, vdb, ...). None is the root device: is_root_device would move it first
// and add root= to the command line, and the contract mounts by device name.
func drives(in []vmm.Drive) []fcapi.Drive {
	out := make([]fcapi.Drive, 0, len(in))
	for n, d := range in {
		out = append(out, fcapi.Drive{DriveID: driveID(n), PathOnHost: d.Path, IsReadOnly: d.ReadOnly})
	}
	return out
}

// relativeTo gives the drives inside dir as paths relative to it (see StartVM);
// others stay as they are.
func relativeTo(dir string, in []vmm.Drive) []vmm.Drive {
	out := slices.Clone(in)
	for n, d := range out {
		if !filepath.IsAbs(d.Path) {
			continue
		}
		if rel, err := filepath.Rel(dir, d.Path); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			out[n].Path = rel
		}
	}
	return out
}

func driveID(n int) string {
	// vda..vdz, then vdaa.., as the guest kernel names them.
	name := ""
	for n++; n > 0; n = (n - 1) / 26 {
		name = string(rune('a'+(n-1)%26)) + name
	}
	return "vd" + name
}

// instanceID makes a Firecracker --id (1-64 alphanumerics and '-') from a VM
// name; it only labels logs and GET /, so a lossy mapping is fine.
func instanceID(name string) string {
	id := strings.Map(func(r rune) rune {
		if r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, name)
	if len(id) > 64 {
		id = id[:64]
	}
	if id == "" {
		id = "mvm"
	}
	return id
}

// removeStaleSocket removes path if it is a socket; anything else there is
// left alone and reported, since Firecracker could not bind it either.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("firecracker: %w", err)
	case fi.Mode().Type() != fs.ModeSocket:
		return fmt.Errorf("firecracker: %s exists and is not a socket", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("firecracker: remove stale socket: %w", err)
	}
	return nil
}

// socketPair returns Firecracker's end of the console (an inheritable file for
// its stdin and stdout) and ours as a net.Conn.
func socketPair() (*os.File, net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	theirs := os.NewFile(uintptr(fds[0]), "firecracker-console")
	f := os.NewFile(uintptr(fds[1]), "console")
	ours, err := net.FileConn(f)
	f.Close()
	if err != nil {
		theirs.Close()
		return nil, nil, fmt.Errorf("console: %w", err)
	}
	return theirs, ours, nil
}
