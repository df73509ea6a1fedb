package vm

import (
	"fmt"
	"time"
)

// Hypervisor backends a user can ask for.
const (
	HypervisorAuto        = "auto"
	HypervisorQEMU        = "qemu"
	HypervisorFirecracker = "firecracker"
)

// Network modes of the skeleton: the default bridge, or no NIC at all.
const (
	NetworkDefault = "default"
	NetworkNone    = "none"
)

// MinMemoryMiB is the smallest guest that boots the default image reliably.
const MinMemoryMiB = 128

// MinDataDiskMiB is the smallest data drive (an ext4 with a journal needs room).
const MinDataDiskMiB = 8

// Spec is what a user asks for with `mvmctl up`.
type Spec struct {
	Name        string `json:"name"`
	Image       string `json:"image"`
	CPUs        int    `json:"cpus"`
	MemoryMiB   int64  `json:"memory_mib"`
	DataDiskMiB int64  `json:"data_disk_mib,omitempty"`
	Network     string `json:"network"`
	Hypervisor  string `json:"hypervisor"`
	// Jailer runs Firecracker under its jailer: chroot, a uid and gid of the
	// VM's own, cgroup v2 limits from the VM's resources.
	Jailer bool       `json:"jailer,omitempty"`
	Kernel string     `json:"kernel,omitempty"` // up --kernel: a kernel file to boot instead of the image's (absolute once validated)
	Ports  []PortSpec `json:"ports,omitempty"`
	Egress Egress     `json:"egress"`
}

// Validate checks a spec against the host's limits. hostCPUs is the number of host cores.
func (s Spec) Validate(hostCPUs int) error {
	if err := ValidateName(s.Name); err != nil {
		return err
	}
	if s.Image == "" {
		return fmt.Errorf("image is empty: use --image default, or see `mvmctl image ls`")
	}
	if s.CPUs < 1 || s.CPUs > hostCPUs {
		return fmt.Errorf("--cpus %d is out of range: this host has %d cores, use 1..%d", s.CPUs, hostCPUs, hostCPUs)
	}
	if s.MemoryMiB < MinMemoryMiB {
		return fmt.Errorf("--memory %s is too small: use at least %dM", FormatMiB(s.MemoryMiB), MinMemoryMiB)
	}
	if s.DataDiskMiB < 0 || (s.DataDiskMiB > 0 && s.DataDiskMiB < MinDataDiskMiB) {
		return fmt.Errorf("--data-disk %s is too small: use at least %dM", FormatMiB(s.DataDiskMiB), MinDataDiskMiB)
	}
	if s.Network != NetworkNone && ValidateName(s.Network) != nil {
		return fmt.Errorf("--network %q is not a network name: use default, none, or one from `mvmctl network ls`", s.Network)
	}
	if s.Network == NetworkNone && s.Egress.Mode != "" && s.Egress.Mode != EgressAllow {
		return fmt.Errorf("--egress needs a network: a VM with --network none has no traffic to restrict")
	}
	switch s.Hypervisor {
	case HypervisorAuto, HypervisorQEMU, HypervisorFirecracker:
	default:
		return fmt.Errorf("--hypervisor %q is unknown: use auto, qemu or firecracker", s.Hypervisor)
	}
	if s.Jailer && s.Hypervisor != HypervisorFirecracker {
		return fmt.Errorf("--jailer is Firecracker's: add --hypervisor firecracker")
	}
	return nil
}

// Record is a VM as the state store keeps it.
type Record struct {
	ID   string `json:"id"`
	Spec Spec   `json:"spec"`

	State    State  `json:"state"`
	Backend  string `json:"backend"`
	Accel    string `json:"accel"`
	ImageRef string `json:"image_digest"`
	Kernel   string `json:"kernel"`
	IP       string `json:"ip,omitempty"`      // CIDR, e.g. 172.28.0.2/24
	Gateway  string `json:"gateway,omitempty"` // e.g. 172.28.0.1
	MAC      string `json:"mac,omitempty"`
	Bridge   string `json:"bridge,omitempty"`
	TAP      string `json:"tap,omitempty"`
	// EgressResolved is Spec.Egress's list as resolved when the VM started (addr:port).
	EgressResolved []string `json:"egress_resolved,omitempty"`
	Foreground     bool     `json:"foreground,omitempty"`
	// RestoreFrom is a snapshot directory the supervisor restores the VM from instead
	// of booting it (up --snapshot or --template, wake).
	RestoreFrom string `json:"restore_from,omitempty"`
	// FromSnapshot says what the VM was restored from: a snapshot name, or
	// "template:NAME"; empty for a cold boot.
	FromSnapshot string    `json:"from_snapshot,omitempty"`
	Template     string    `json:"template,omitempty"`
	SleptAt      time.Time `json:"slept_at,omitzero"`

	CreatedAt  time.Time `json:"created_at"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	ReadyAt    time.Time `json:"ready_at,omitzero"`
	ExitedAt   time.Time `json:"exited_at,omitzero"`
	ExitReason string    `json:"exit_reason,omitempty"`

	// Processes, identified by PID and start time so a recycled PID is never mistaken for ours.
	SupervisorPID   int    `json:"supervisor_pid,omitempty"`
	SupervisorStart uint64 `json:"supervisor_start,omitempty"`
	HypervisorPID   int    `json:"hypervisor_pid,omitempty"`
	HypervisorStart uint64 `json:"hypervisor_start,omitempty"`

	// JailUID is the uid and gid a jailed Firecracker runs as (Spec.Jailer): one
	// per VM, so no two VMs share their files or processes.
	JailUID int `json:"jail_uid,omitempty"`
	// JailDir and JailCgroup are where the jailer put the VM, recorded once it
	// runs, so that a cleanup after a crash finds them whatever the firecracker
	// binary (which names both) is called by then, or if it is gone.
	JailDir    string `json:"jail_dir,omitempty"`
	JailCgroup string `json:"jail_cgroup,omitempty"`
}

// Jail uids: a range far above login users and the usual subordinate-id
// ranges of user namespaces (/etc/subuid starts at 100000).
const (
	JailUIDBase  = 1 << 30
	JailUIDCount = 1 << 16
)

// JailName is the jailer's --id for the VM: its id, not its name, so that the
// chroot path stays short and a new VM of the same name never meets an old jail.
func (r Record) JailName() string { return JailNamePrefix + r.ID }

// JailNamePrefix begins every JailName.
const JailNamePrefix = "mvm-"

// FreeJailUID is the lowest jail uid none of vms holds.
func FreeJailUID(vms []Record) (int, error) {
	used := make(map[int]bool, len(vms))
	for _, v := range vms {
		used[v.JailUID] = true
	}
	for uid := JailUIDBase; uid < JailUIDBase+JailUIDCount; uid++ {
		if !used[uid] {
			return uid, nil
		}
	}
	return 0, fmt.Errorf("all %d jail uids are in use: remove VMs with `mvmctl down`", JailUIDCount)
}

// SetState moves the record to a new state, enforcing the state machine.
func (r *Record) SetState(to State) error {
	if err := Transition(r.State, to); err != nil {
		return fmt.Errorf("vm %s: %w", r.Spec.Name, err)
	}
	r.State = to
	return nil
}
