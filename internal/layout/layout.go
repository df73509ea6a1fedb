// Package layout names every file mvm keeps under its root directory (/var/lib/mvm, or
// MVM_ROOT), so no other package builds paths by hand.
package layout

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// DefaultRoot is where mvm keeps state, images and runtime files unless told otherwise.
const DefaultRoot = "/var/lib/mvm"

// EnvRoot names the environment variable that moves the root.
const EnvRoot = "MVM_ROOT"

// maxSocketPath is sun_path's size minus the terminating NUL.
const maxSocketPath = 107

// Root is an mvm root directory.
type Root struct{ Dir string }

// New returns the root at dir (made absolute).
func New(dir string) (Root, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Root{}, err
	}
	r := Root{Dir: abs}
	if probe := r.VM("0123456789ab").AgentSocket(); len(probe) > maxSocketPath {
		return Root{}, fmt.Errorf("mvm root %s is too long: its Unix sockets would exceed %d bytes; use a shorter --root or %s", abs, maxSocketPath, EnvRoot)
	}
	return r, nil
}

// Images is the image store.
func (r Root) Images() string { return filepath.Join(r.Dir, "images") }

// Cache holds downloads (kernel packages).
func (r Root) Cache() string { return filepath.Join(r.Dir, "cache") }

// Bin holds the programs mvm installs for itself (`mvmctl bootstrap --firecracker`
// puts firecracker and jailer here), so nothing is written to the host's own PATH.
func (r Root) Bin() string { return filepath.Join(r.Dir, "bin") }

// State is the directory of the state database.
func (r Root) State() string { return r.Dir }

// VMs holds one directory per VM.
func (r Root) VMs() string { return filepath.Join(r.Dir, "vms") }

// VM returns the layout of one VM's directory, keyed by its ID.
func (r Root) VM(id string) VMDir { return VMDir{Dir: filepath.Join(r.VMs(), id)} }

// Snapshots holds one directory per snapshot (user snapshots and templates').
func (r Root) Snapshots() string { return filepath.Join(r.Dir, "snapshots") }

// Snapshot returns the layout of one snapshot's directory, keyed by its ID.
func (r Root) Snapshot(id string) SnapDir { return SnapDir{Dir: filepath.Join(r.Snapshots(), id)} }

// Jail is the chroot base of VMs run under Firecracker's jailer. It must be on
// the VMs' filesystem: their disks are hard linked into their chroots.
func (r Root) Jail() string { return filepath.Join(r.Dir, "jail") }

// SnapshotKey is the host key that seals snapshots (0600).
func (r Root) SnapshotKey() string { return filepath.Join(r.Dir, "snapshot.key") }

// EnsureDirs creates the root's directories.
func (r Root) EnsureDirs() error {
	for _, d := range []string{r.Dir, r.Images(), r.Cache(), r.VMs(), r.Snapshots()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	// Tokens, consoles and guest memory live below.
	if err := os.Chmod(r.Snapshots(), 0o700); err != nil {
		return err
	}
	return os.Chmod(r.VMs(), 0o700)
}

// SnapDir is a saved VM: device and memory state, disks, token and sealed metadata.
type SnapDir struct{ Dir string }

// Path returns a file of the snapshot (names in package snapfile).
func (s SnapDir) Path(name string) string { return filepath.Join(s.Dir, name) }

// Lock is held shared by restores reading the snapshot and exclusively by whoever
// removes or replaces it.
func (s SnapDir) Lock() string { return filepath.Join(s.Dir, "lock") }

// VMDir is a VM's private directory.
type VMDir struct{ Dir string }

func (v VMDir) path(name string) string { return filepath.Join(v.Dir, name) }

// Lock is held by whoever owns the VM (the CLI while creating, then its supervisor).
func (v VMDir) Lock() string { return v.path("lock") }

// Rootfs is the VM's private copy of the image rootfs (vda).
func (v VMDir) Rootfs() string { return v.path("rootfs.ext4") }

// Config is the config drive (vdb).
func (v VMDir) Config() string { return v.path("config.ext4") }

// Secrets is the secrets drive (vdc).
func (v VMDir) Secrets() string { return v.path("secrets.ext4") }

// Data is the optional data drive (vdd).
func (v VMDir) Data() string { return v.path("data.ext4") }

// Kernel is the VM's own copy of the kernel it boots when it has one of its own
// (up --kernel, or restored from a snapshot of such a VM), so that a change to
// the user's file changes neither the VM nor its snapshots.
func (v VMDir) Kernel() string { return v.path("kernel") }

// Token is the host's copy of the agent token (0600).
func (v VMDir) Token() string { return v.path("token") }

// ConsoleLog is the current serial console log; ConsoleLogOld the rotated one.
func (v VMDir) ConsoleLog() string { return v.path("console.log") }

// ConsoleLogOld is the previous console log segment.
func (v VMDir) ConsoleLogOld() string { return v.path("console.log.1") }

// SupervisorLog is the supervisor's own log.
func (v VMDir) SupervisorLog() string { return v.path("supervisor.log") }

// AgentSocket speaks the hybrid-vsock handshake to the guest agent.
func (v VMDir) AgentSocket() string { return v.path("agent.sock") }

// ConsoleSocket attaches to the serial console.
func (v VMDir) ConsoleSocket() string { return v.path("console.sock") }

// Sleep is where a sleeping VM's saved state is kept (its disks stay in place).
func (v VMDir) Sleep() SnapDir { return SnapDir{Dir: v.path("sleep")} }

// ControlSocket takes requests for the supervisor (stop).
func (v VMDir) ControlSocket() string { return v.path("ctl.sock") }

// RuntimeFiles are removed when the VM stops: its sockets, secrets and ephemeral disks.
func (v VMDir) RuntimeFiles() []string {
	return []string{v.AgentSocket(), v.ConsoleSocket(), v.ControlSocket(), v.Token(), v.Secrets(), v.Config(), v.Rootfs(),
		v.path("api.sock"), v.path("vsock.sock"), // Firecracker's (see vmm/firecracker)
		v.Kernel()}
}

// RemoveRuntimeFiles removes the runtime files and any staging directory a killed
// mkfs left (they may hold a copy of the agent token).
func (v VMDir) RemoveRuntimeFiles() {
	v.removeRuntime(v.RuntimeFiles())
}

// RemoveRuntimeFilesKeepingDisks is RemoveRuntimeFiles for a VM that sleeps: its
// rootfs (and its own kernel, if any) stays with its saved state.
func (v VMDir) RemoveRuntimeFilesKeepingDisks() {
	var files []string
	for _, f := range v.RuntimeFiles() {
		if f != v.Rootfs() && f != v.Kernel() {
			files = append(files, f)
		}
	}
	v.removeRuntime(files)
}

func (v VMDir) removeRuntime(files []string) {
	for _, f := range files {
		_ = os.Remove(f)
	}
	for _, pattern := range []string{".secrets-*", ".config-*"} {
		matches, _ := filepath.Glob(filepath.Join(v.Dir, pattern))
		for _, m := range matches {
			_ = os.RemoveAll(m)
		}
	}
}

// Config is the root's optional config file, config.json.
type Config struct {
	// DefaultSubnet fixes the default network's subnet (else one not overlapping the
	// host's routes is chosen).
	DefaultSubnet string `json:"default_subnet,omitempty"`
}

// ConfigFile is the path of the root's config file.
func (r Root) ConfigFile() string { return filepath.Join(r.Dir, "config.json") }

// ReadConfig reads the config file; a missing one is an empty config.
func ReadConfig(r Root) (Config, error) {
	var c Config
	b, err := os.ReadFile(r.ConfigFile())
	if os.IsNotExist(err) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s: %w", r.ConfigFile(), err)
	}
	return c, nil
}

// DiskUsage is the space the files under dir take on disk (allocated blocks, so
// sparse disks count for what they hold).
func DiskUsage(dir string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				total += st.Blocks * 512
			}
		}
		return nil
	})
	return total
}
