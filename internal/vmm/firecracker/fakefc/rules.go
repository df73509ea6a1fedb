package fakefc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"unicode"
)

// Fault messages Firecracker sends, kept word for word where known.
const (
	msgPostBoot   = "The requested operation is not supported after starting the microVM."
	msgPreBoot    = "The requested operation is not supported before starting the microVM."
	msgIDMismatch = "The id from the path does not match the id from the body!"
	msgNoKernel   = "Start microvm error: Cannot start microvm without kernel configuration."
	msgLoadAfter  = "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources."
	msgRunning    = "Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running"
)

type reply struct {
	status int
	body   any // nil: no body
	fatal  bool
}

func faultf(status int, format string, args ...any) reply {
	return reply{status: status, body: map[string]string{"fault_message": fmt.Sprintf(format, args...)}}
}

func bad(format string, args ...any) reply { return faultf(http.StatusBadRequest, format, args...) }

var noContent = reply{status: http.StatusNoContent}

func ok(body any) reply { return reply{status: http.StatusOK, body: body} }

// route is one PUT or PATCH endpoint: the body definition it takes, the
// body field that must equal the id in the path, and what it does.
type route struct {
	schema  string
	idField string
	apply   func(s *Server, body map[string]any) reply
}

func (s *Server) handle(ctx context.Context, method, path string, raw []byte) reply {
	for i, f := range s.faults {
		if f.method == method && f.path == path {
			s.faults = append(s.faults[:i], s.faults[i+1:]...)
			return faultf(f.status, "%s", f.message)
		}
	}
	if method == http.MethodGet {
		switch path {
		case "/":
			return ok(map[string]string{"id": s.opts.id, "state": s.state, "vmm_version": s.opts.version, "app_name": "Firecracker"})
		case "/version":
			return ok(map[string]string{"firecracker_version": s.opts.version})
		case "/machine-config":
			return ok(s.machineConfig())
		}
		return bad("Invalid request method and/or path: %s %s.", method, path)
	}

	rt, id, found := s.lookup(ctx, method, path)
	if !found {
		return bad("Invalid request method and/or path: %s %s.", method, path)
	}
	if rt.idField != "" {
		if id == "" {
			return bad("The ID cannot be empty.")
		}
		if !validID(id) {
			return bad("API Resource IDs can only contain alphanumeric characters and underscores.")
		}
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return bad("Empty %s request.", method)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return bad("An error occurred when deserializing the json body of a request: %v.", err)
	}
	if dec.More() {
		return bad("An error occurred when deserializing the json body of a request: trailing characters.")
	}
	if err := s.schemas[rt.schema].check("", v); err != nil {
		return bad("An error occurred when deserializing the json body of a request: %v.", err)
	}
	body := v.(map[string]any) // check has made sure of it
	if rt.idField != "" && body[rt.idField] != id {
		return bad(msgIDMismatch)
	}
	return rt.apply(s, body)
}

// lookup finds the route; the routes that may call the Machine get ctx,
// the request's.
func (s *Server) lookup(ctx context.Context, method, path string) (route, string, bool) {
	withCtx := func(f func(*Server, context.Context, map[string]any) reply) func(*Server, map[string]any) reply {
		return func(s *Server, body map[string]any) reply { return f(s, ctx, body) }
	}
	if method == http.MethodPatch {
		if path == "/vm" {
			return route{schema: "Vm", apply: withCtx((*Server).patchVM)}, "", true
		}
		return route{}, "", false
	}
	if method != http.MethodPut {
		return route{}, "", false
	}
	if id, ok := trimID(path, "/drives/"); ok {
		return route{schema: "Drive", idField: "drive_id", apply: (*Server).putDrive}, id, true
	}
	if id, ok := trimID(path, "/network-interfaces/"); ok {
		return route{schema: "NetworkInterface", idField: "iface_id", apply: (*Server).putIface}, id, true
	}
	rt, ok := map[string]route{
		"/boot-source":     {schema: "BootSource", apply: (*Server).putBootSource},
		"/machine-config":  {schema: "MachineConfiguration", apply: (*Server).putMachine},
		"/vsock":           {schema: "Vsock", apply: preboot(func(c *config, b map[string]any) { c.vsock = b })},
		"/entropy":         {schema: "EntropyDevice", apply: preboot(func(c *config, b map[string]any) { c.entropy = b })},
		"/balloon":         {schema: "Balloon", apply: preboot(func(c *config, b map[string]any) { c.balloon = b })},
		"/logger":          {schema: "Logger", apply: (*Server).putLogger},
		"/metrics":         {schema: "Metrics", apply: (*Server).putMetrics},
		"/actions":         {schema: "InstanceActionInfo", apply: withCtx((*Server).action)},
		"/snapshot/create": {schema: "SnapshotCreateParams", apply: withCtx((*Server).createSnapshot)},
		"/snapshot/load":   {schema: "SnapshotLoadParams", apply: withCtx((*Server).loadSnapshot)},
	}[path]
	return rt, "", ok
}

// validID follows Firecracker's checked_id: alphanumerics and '_'.
func validID(id string) bool {
	for _, r := range id {
		if r != '_' && !unicode.IsLetter(r) && !unicode.IsNumber(r) {
			return false
		}
	}
	return true
}

// preboot stores a boot-specific resource, one that can only be set before
// InstanceStart and blocks a snapshot load.
func preboot(store func(*config, map[string]any)) func(*Server, map[string]any) reply {
	return func(s *Server, body map[string]any) reply {
		if s.started {
			return bad(msgPostBoot)
		}
		s.bootPath = true
		store(&s.cfg, body)
		return noContent
	}
}

func (s *Server) putBootSource(body map[string]any) reply {
	if s.started {
		return bad(msgPostBoot)
	}
	s.bootPath = true
	for _, kw := range [][2]string{{"kernel_image_path", "kernel"}, {"initrd_path", "initrd"}} {
		k, what := kw[0], kw[1]
		if p, ok := body[k].(string); ok {
			if err := s.mustExist(p); err != nil {
				return bad("Boot source error: The %s file cannot be opened: %v", what, err)
			}
		}
	}
	s.cfg.bootSource = body
	return noContent
}

func (s *Server) putMachine(body map[string]any) reply {
	if s.started {
		return bad(msgPostBoot)
	}
	s.bootPath = true
	vcpus, _ := body["vcpu_count"].(json.Number).Int64()
	mem, _ := body["mem_size_mib"].(json.Number).Int64()
	smt, _ := body["smt"].(bool)
	if vcpus < 1 || vcpus > 32 || smt && vcpus > 1 && vcpus%2 != 0 {
		return bad("Machine config error: The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
	}
	if mem == 0 || body["huge_pages"] == "2M" && mem%2 != 0 {
		return bad("Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size.")
	}
	s.cfg.machine = body
	return noContent
}

func (s *Server) machineConfig() map[string]any {
	mc := map[string]any{"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "track_dirty_pages": false, "huge_pages": "None"}
	for k, v := range s.cfg.machine {
		mc[k] = v
	}
	return mc
}

func (s *Server) putDrive(body map[string]any) reply {
	if s.started {
		return bad(msgPostBoot)
	}
	s.bootPath = true
	id := body["drive_id"].(string)
	path, hasPath := body["path_on_host"].(string)
	_, hasSocket := body["socket"].(string)
	_, hasRO := body["is_read_only"].(bool)
	switch {
	case hasPath && hasSocket:
		return bad("Drive config error: path_on_host and socket cannot both be set: a drive is either virtio-block or vhost-user-block.")
	case !hasSocket && (!hasPath || !hasRO):
		return bad("Drive config error: a virtio-block drive needs path_on_host and is_read_only.")
	}
	if hasPath {
		if err := s.mustExist(path); err != nil {
			return bad("Drive config error: Unable to create the virtio block device: %v", err)
		}
	}
	if body["is_root_device"] == true {
		for other, d := range s.cfg.drives {
			if other != id && d["is_root_device"] == true {
				return bad("Drive config error: A root block device already exists!")
			}
		}
	}
	if _, ok := s.cfg.drives[id]; !ok {
		// Replacing a drive keeps its place, as in Firecracker.
		s.cfg.driveOrder = append(s.cfg.driveOrder, id)
	}
	s.cfg.drives[id] = body
	return noContent
}

func (s *Server) putIface(body map[string]any) reply {
	if s.started {
		return bad(msgPostBoot)
	}
	s.bootPath = true
	id, dev := body["iface_id"].(string), body["host_dev_name"].(string)
	if mac, ok := body["guest_mac"].(string); ok {
		if hw, err := net.ParseMAC(mac); err != nil || len(hw) != 6 || len(mac) != 17 {
			return bad("An error occurred when deserializing the json body of a request: invalid MAC address `%s`.", mac)
		}
	}
	for other, n := range s.cfg.ifaces {
		if other != id && n["host_dev_name"] == dev {
			return bad("Network config error: The host device name %s is already in use.", dev)
		}
	}
	s.cfg.ifaces[id] = body
	return noContent
}

// putLogger configures the logger. Firecracker opens log_path at once, for
// reading and writing and without creating it (the caller makes the file or
// FIFO first), so the fake checks that it can be opened so. The logger is not
// boot-specific: it does not block a snapshot load.
func (s *Server) putLogger(body map[string]any) reply {
	if s.started {
		return bad(msgPostBoot)
	}
	if p, ok := body["log_path"].(string); ok {
		if err := s.mustOpen(p); err != nil {
			return bad("Logger error: Cannot open the log file: %v", err)
		}
	}
	s.cfg.logger = body
	return noContent
}

// putMetrics configures metrics, once. Like log_path, metrics_path is opened
// at once and never created.
func (s *Server) putMetrics(body map[string]any) reply {
	if s.started {
		return bad(msgPostBoot)
	}
	if s.cfg.metrics != nil {
		return bad("Metrics error: Reinitialization of metrics not allowed.")
	}
	if err := s.mustOpen(body["metrics_path"].(string)); err != nil {
		return bad("Metrics error: Cannot open the metrics file: %v", err)
	}
	s.cfg.metrics = body
	return noContent
}

func (s *Server) action(ctx context.Context, body map[string]any) reply {
	switch body["action_type"] {
	case "InstanceStart":
		if s.started {
			return bad(msgPostBoot)
		}
		// No root drive is needed: a guest can run from an initrd.
		if s.cfg.bootSource == nil {
			return bad(msgNoKernel)
		}
		if m := s.opts.machine; m != nil {
			vm, err := s.vm()
			if err == nil {
				err = m.Start(ctx, vm)
			}
			if err != nil {
				return bad("Start microvm error: %v", err)
			}
		}
		s.started, s.state = true, StateRunning
	case "SendCtrlAltDel":
		if !s.started {
			return bad(msgPreBoot)
		}
		if m := s.opts.machine; m != nil {
			if err := m.SendCtrlAltDel(ctx); err != nil {
				return bad("Send CtrlAltDel error: %v", err)
			}
		}
	default: // FlushMetrics
		if !s.started {
			return bad(msgPreBoot)
		}
	}
	return noContent
}

func (s *Server) patchVM(ctx context.Context, body map[string]any) reply {
	if !s.started {
		return bad(msgPreBoot)
	}
	// Pausing a paused VM, or resuming a running one, succeeds.
	pause := body["state"] == "Paused"
	if m := s.opts.machine; m != nil {
		if pause {
			if err := m.Pause(ctx); err != nil {
				return bad("Failed to pause the microVM: %v", err)
			}
		} else if err := m.Resume(ctx); err != nil {
			return bad("Failed to resume the microVM: %v", err)
		}
	}
	if pause {
		s.state = StatePaused
	} else {
		s.state = StateRunning
	}
	return noContent
}

// marker is what the fake writes as a "snapshot": enough to restore its own
// state and to check the rules of a load.
// Paths are kept as they were given (relative stays relative), since a load
// resolves them again, as Firecracker reopens disks at the recorded paths.
type marker struct {
	Fake       string                    `json:"fakefc"`
	VMMVersion string                    `json:"vmm_version"`
	Type       string                    `json:"snapshot_type"`
	Machine    map[string]any            `json:"machine_config"`
	BootSource map[string]any            `json:"boot_source,omitempty"`
	Drives     map[string]map[string]any `json:"drives"`
	DriveOrder []string                  `json:"drive_order,omitempty"`
	Ifaces     map[string]map[string]any `json:"network_interfaces"`
	Vsock      map[string]any            `json:"vsock,omitempty"`
	Entropy    map[string]any            `json:"entropy,omitempty"`
	Balloon    map[string]any            `json:"balloon,omitempty"`
}

const memMarker = "fakefc guest memory marker\n"

func (s *Server) createSnapshot(ctx context.Context, body map[string]any) reply {
	if !s.started {
		return bad(msgPreBoot)
	}
	if s.state != StatePaused {
		return bad(msgRunning)
	}
	typ, _ := body["snapshot_type"].(string)
	if typ == "" {
		typ = "Full"
	}
	m := marker{Fake: "snapshot", VMMVersion: s.opts.version, Type: typ, Machine: s.machineConfig(),
		BootSource: s.cfg.bootSource, Drives: s.cfg.drives, DriveOrder: s.cfg.driveOrder, Ifaces: s.cfg.ifaces,
		Vsock: s.cfg.vsock, Entropy: s.cfg.entropy, Balloon: s.cfg.balloon}
	state, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return faultf(http.StatusInternalServerError, "Create snapshot error: Cannot serialize the microVM state: %v", err)
	}
	statePath, memPath := s.file(body["snapshot_path"].(string)), s.file(body["mem_file_path"].(string))
	// Memory first: it is what a Machine can fail to write. Nothing half
	// written is left behind, so no one mistakes it for a snapshot.
	if mach := s.opts.machine; mach != nil {
		if err := mach.CreateSnapshot(ctx, memPath); err != nil {
			_ = os.Remove(memPath)
			return bad("Create snapshot error: Cannot save the microVM memory: %v", err)
		}
	} else if err := os.WriteFile(memPath, []byte(memMarker), 0o600); err != nil {
		_ = os.Remove(memPath)
		return bad("Create snapshot error: Cannot perform open on the memory backing file: %v", err)
	}
	if err := writeNew(statePath, state); err != nil {
		_ = os.Remove(memPath)
		return bad("Create snapshot error: Cannot perform open on the snapshot backing file: %v", err)
	}
	return noContent
}

// writeNew writes a 0600 file, and removes what it wrote if it fails.
func writeNew(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
	}
	return err
}

func (s *Server) loadSnapshot(ctx context.Context, body map[string]any) reply {
	if s.started {
		return bad(msgPostBoot)
	}
	_, hasBackend := body["mem_backend"].(map[string]any)
	_, hasFile := body["mem_file_path"].(string)
	if hasBackend == hasFile {
		return bad("An error occurred when deserializing the json body of a request: exactly one of `mem_backend` and `mem_file_path` must be present.")
	}
	if s.bootPath {
		return bad(msgLoadAfter)
	}
	// From here on a failure is a failed restore, after which Firecracker exits.
	fail := func(format string, args ...any) reply {
		r := bad("Load snapshot error: Failed to restore from snapshot: "+format, args...)
		r.fatal = true
		return r
	}
	raw, err := os.ReadFile(s.file(body["snapshot_path"].(string)))
	if err != nil {
		return fail("Cannot open the snapshot file: %v", err)
	}
	var m marker
	if err := json.Unmarshal(raw, &m); err != nil || m.Fake != "snapshot" {
		return fail("Cannot deserialize the microVM state: not a snapshot this fake wrote")
	}
	if majorMinor(m.VMMVersion) != majorMinor(s.opts.version) {
		return fail("the snapshot was made by Firecracker %s and cannot be loaded by %s", m.VMMVersion, s.opts.version)
	}
	memPath, _ := body["mem_file_path"].(string)
	if mb, ok := body["mem_backend"].(map[string]any); ok {
		memPath = mb["backend_path"].(string)
	}
	if _, err := os.Stat(s.file(memPath)); err != nil {
		return fail("Cannot load the guest memory: %v", err)
	}
	if s.opts.fileChecks {
		// Disks are not in the snapshot: their paths must resolve again.
		for id, d := range m.Drives {
			if p, ok := d["path_on_host"].(string); ok {
				if _, err := os.Stat(s.file(p)); err != nil {
					return fail("Cannot restore drive %s: %v", id, err)
				}
			}
		}
	}
	overrides, _ := body["network_overrides"].([]any)
	for _, o := range overrides {
		ov := o.(map[string]any)
		iface, ok := m.Ifaces[ov["iface_id"].(string)]
		if !ok {
			return fail("Invalid network override: the snapshot has no interface %v", ov["iface_id"])
		}
		iface["host_dev_name"] = ov["host_dev_name"]
	}
	restored := config{machine: m.Machine, bootSource: m.BootSource, drives: m.Drives, driveOrder: m.DriveOrder,
		ifaces: m.Ifaces, vsock: m.Vsock, entropy: m.Entropy, balloon: m.Balloon,
		logger: s.cfg.logger, metrics: s.cfg.metrics}
	if restored.drives == nil {
		restored.drives = map[string]map[string]any{}
	}
	if restored.ifaces == nil {
		restored.ifaces = map[string]map[string]any{}
	}
	previous := s.cfg
	s.cfg = restored
	resume := body["resume_vm"] == true
	if mach := s.opts.machine; mach != nil {
		vm, err := s.vm()
		if err == nil {
			err = mach.LoadSnapshot(ctx, vm, s.file(memPath), resume)
		}
		if err != nil {
			s.cfg = previous
			return fail("%v", err)
		}
	}
	s.started, s.state = true, StatePaused
	if resume {
		s.state = StateRunning
	}
	return noContent
}

func (s *Server) mustExist(path string) error {
	if !s.opts.fileChecks {
		return nil
	}
	_, err := os.Stat(s.file(path))
	return err
}

// mustOpen opens path as Firecracker opens its log and metrics files:
// read-write, non-blocking (a FIFO with no reader yet must not hang it), and
// never created.
func (s *Server) mustOpen(path string) error {
	if !s.opts.fileChecks {
		return nil
	}
	f, err := os.OpenFile(s.file(path), os.O_RDWR|syscall.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// file is where a path Firecracker was given lies on the host (see Resolve).
func (s *Server) file(path string) string { return Resolve(s.opts.root, s.opts.workDir, path) }

// Resolve is where path, as a Firecracker process was given it, lies on the
// host. With root set the process is taken to be chrooted there by the
// jailer, whose working directory is the chroot's "/": path, absolute or
// relative, lies inside root, and is cleaned as an absolute path first so
// that ".." cannot leave root, as it cannot leave a chroot. Otherwise a
// relative path lies in workDir (when set), as the process opens it against
// its working directory, and an absolute one is itself.
//
// An empty path stays empty, never becoming root or workDir, so it still
// fails to open as it does in Firecracker. The fake resolves every path it
// is given through this, and so does a program serving it (the QEMU test
// double) for what it opens itself.
func Resolve(root, workDir, path string) string {
	switch {
	case path == "":
		return ""
	case root != "":
		return filepath.Join(root, filepath.Clean("/"+path))
	case workDir != "" && !filepath.IsAbs(path):
		return filepath.Join(workDir, path)
	}
	return path
}

func majorMinor(v string) string {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return v
	}
	return parts[0] + "." + parts[1]
}
