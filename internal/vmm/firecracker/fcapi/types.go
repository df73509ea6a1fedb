package fcapi

import "encoding/json"

// APIVersion is the Firecracker release this client is written for.
//
// The types follow the definitions in src/firecracker/swagger/firecracker.yaml
// of firecracker-microvm/firecracker, read at commit 004d935 (its info.version
// is 1.17.0-dev) and cross-checked against commit cd76b45 (1.9.0-dev), keeping
// only what 1.13 has according to Firecracker's changelog: network_overrides
// (added in 1.12) is in; vsock_override, clock_realtime, the interface mtu,
// pmem, serial, memory hotplug and balloon page hinting/reporting (all later)
// are out, because Firecracker refuses fields it does not know.
const APIVersion = "1.13.0"

// InstanceState is the state GET / reports.
type InstanceState string

const (
	StateNotStarted InstanceState = "Not started"
	StateRunning    InstanceState = "Running"
	StatePaused     InstanceState = "Paused"
)

// InstanceInfo is the answer to GET / (InstanceInfo in the description).
type InstanceInfo struct {
	ID         string        `json:"id"`
	State      InstanceState `json:"state"`
	VMMVersion string        `json:"vmm_version"`
	AppName    string        `json:"app_name"`
}

// BootSource is the body of PUT /boot-source.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// Huge page settings for MachineConfig.HugePages.
const (
	HugePagesNone = "None"
	HugePages2M   = "2M"
)

// MachineConfig is the body of PUT /machine-config and the answer to GET.
// Optional fields left out are reset to their defaults by Firecracker.
type MachineConfig struct {
	VCPUCount       int    `json:"vcpu_count"`
	MemSizeMiB      int    `json:"mem_size_mib"`
	SMT             bool   `json:"smt,omitempty"`
	TrackDirtyPages bool   `json:"track_dirty_pages,omitempty"`
	CPUTemplate     string `json:"cpu_template,omitempty"` // deprecated by Firecracker
	HugePages       string `json:"huge_pages,omitempty"`
}

// TokenBucket is one bucket of a RateLimiter.
type TokenBucket struct {
	Size         int64 `json:"size"`
	OneTimeBurst int64 `json:"one_time_burst,omitempty"`
	RefillTime   int64 `json:"refill_time"` // milliseconds
}

// RateLimiter limits bytes (Bandwidth) and operations (Ops).
type RateLimiter struct {
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	Ops       *TokenBucket `json:"ops,omitempty"`
}

// Drive cache types and IO engines.
const (
	CacheUnsafe    = "Unsafe"
	CacheWriteback = "Writeback"
	IOEngineSync   = "Sync"
	IOEngineAsync  = "Async"
)

// Drive is the body of PUT /drives/{drive_id}. A virtio-block drive sets
// PathOnHost; a vhost-user-block drive sets Socket instead.
type Drive struct {
	DriveID      string       `json:"drive_id"`
	PathOnHost   string       `json:"path_on_host,omitempty"`
	IsRootDevice bool         `json:"is_root_device"`
	IsReadOnly   bool         `json:"is_read_only"`
	PartUUID     string       `json:"partuuid,omitempty"`
	CacheType    string       `json:"cache_type,omitempty"`
	IOEngine     string       `json:"io_engine,omitempty"`
	RateLimiter  *RateLimiter `json:"rate_limiter,omitempty"`
	Socket       string       `json:"socket,omitempty"`
}

// MarshalJSON leaves is_read_only out of a vhost-user-block drive: the
// description says it is required for virtio-block and omitted otherwise.
func (d Drive) MarshalJSON() ([]byte, error) {
	type wire Drive
	if d.Socket == "" {
		return json.Marshal(wire(d))
	}
	return json.Marshal(struct {
		wire
		IsReadOnly *bool `json:"is_read_only,omitempty"` // shadows wire's field
	}{wire: wire(d)})
}

// NetworkInterface is the body of PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	IfaceID       string       `json:"iface_id"`
	HostDevName   string       `json:"host_dev_name"`
	GuestMAC      string       `json:"guest_mac,omitempty"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// Vsock is the body of PUT /vsock.
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// Logger is the body of PUT /logger; every field is optional.
type Logger struct {
	Level         string `json:"level,omitempty"` // Error, Warning, Info, Debug, Trace, Off
	LogPath       string `json:"log_path,omitempty"`
	ShowLevel     bool   `json:"show_level,omitempty"`
	ShowLogOrigin bool   `json:"show_log_origin,omitempty"`
	Module        string `json:"module,omitempty"`
}

// Metrics is the body of PUT /metrics.
type Metrics struct {
	MetricsPath string `json:"metrics_path"`
}

// Entropy is the body of PUT /entropy (EntropyDevice).
type Entropy struct {
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// Balloon is the body of PUT /balloon.
type Balloon struct {
	AmountMiB             int  `json:"amount_mib"`
	DeflateOnOOM          bool `json:"deflate_on_oom"`
	StatsPollingIntervalS int  `json:"stats_polling_interval_s,omitempty"`
}

// ActionType is the action_type of PUT /actions.
type ActionType string

const (
	ActionInstanceStart  ActionType = "InstanceStart"
	ActionSendCtrlAltDel ActionType = "SendCtrlAltDel"
	ActionFlushMetrics   ActionType = "FlushMetrics"
)

type instanceAction struct {
	ActionType ActionType `json:"action_type"`
}

// VMState is the state PATCH /vm asks for.
type VMState string

const (
	VMPaused  VMState = "Paused"
	VMResumed VMState = "Resumed"
)

type vm struct {
	State VMState `json:"state"`
}

// SnapshotType is Full or Diff; empty means Full.
type SnapshotType string

const (
	SnapshotFull SnapshotType = "Full"
	SnapshotDiff SnapshotType = "Diff"
)

// SnapshotCreate is the body of PUT /snapshot/create.
type SnapshotCreate struct {
	SnapshotType SnapshotType `json:"snapshot_type,omitempty"`
	SnapshotPath string       `json:"snapshot_path"`
	MemFilePath  string       `json:"mem_file_path"`
}

// Memory backend types.
const (
	BackendFile = "File"
	BackendUffd = "Uffd"
)

// MemoryBackend says where a loaded snapshot's guest memory comes from.
type MemoryBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

// NetworkOverride points a restored interface at another host TAP device.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// SnapshotLoad is the body of PUT /snapshot/load. The deprecated
// mem_file_path and enable_diff_snapshots are left out on purpose.
type SnapshotLoad struct {
	SnapshotPath     string            `json:"snapshot_path"`
	MemBackend       MemoryBackend     `json:"mem_backend"`
	TrackDirtyPages  bool              `json:"track_dirty_pages,omitempty"`
	ResumeVM         bool              `json:"resume_vm,omitempty"`
	NetworkOverrides []NetworkOverride `json:"network_overrides,omitempty"`
}

type firecrackerVersion struct {
	FirecrackerVersion string `json:"firecracker_version"`
}
