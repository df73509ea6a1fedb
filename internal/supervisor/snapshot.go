package supervisor

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/client"
	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/procutil"
	"github.com/mvm-dev/mvm/internal/snapfile"
	"github.com/mvm-dev/mvm/internal/version"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker"
)

// Snapshot kinds: a user snapshot or a template's (the VM goes on), or sleep (the VM
// ends and is woken from it later, with its disks where they are).
const (
	KindSnapshot = "snapshot"
	KindTemplate = "template"
	KindSleep    = "sleep"
)

// SnapshotRequest asks the supervisor to save its VM into Dir (which exists, is
// empty and is locked by the caller).
type SnapshotRequest struct {
	Dir  string `json:"dir"`
	Kind string `json:"kind"`
	Name string `json:"name"`
	ID   string `json:"id"`
}

// SnapshotResult reports a saved snapshot.
type SnapshotResult struct {
	Meta      snapfile.Meta `json:"meta"`
	SizeBytes int64         `json:"size_bytes"` // allocated on disk
	PausedMs  float64       `json:"paused_ms"`  // how long the vCPUs stood still
	SaveMs    float64       `json:"save_ms"`    // device and memory state
	DisksMs   float64       `json:"disks_ms"`
}

// restoreSource is an opened snapshot a VM is being restored from.
type restoreSource struct {
	dir      layout.SnapDir
	meta     snapfile.Meta
	inPlace  bool // sleep: the disks are the VM's own, checked, not copied
	lock     *procutil.Lock
	oldToken []byte

	// The memory state's check against the seal, running beside the load.
	memCheck     chan error
	memChecked   bool
	memErr       error
	memCheckTook time.Duration

	resumedAt time.Time // when the restored guest first ran
}

func (r *restoreSource) release() {
	if r != nil && r.lock != nil {
		r.lock.Unlock()
		r.lock = nil
	}
}

// openRestore opens and checks the snapshot the record says to restore from. The
// runtime has checked compatibility before starting the supervisor; this checks the
// seal, the token and (while reading them) every file.
func (s *supervisor) openRestore(ctx context.Context) (*restoreSource, error) {
	src := &restoreSource{dir: layout.SnapDir{Dir: s.rec.RestoreFrom}}
	src.inPlace = src.dir.Dir == s.dir.Sleep().Dir
	if !src.inPlace {
		l, err := procutil.LockShared(ctx, src.dir.Lock(), 30*time.Second)
		if err != nil {
			return nil, fmt.Errorf("snapshot %s is being removed or replaced: %w", s.rec.FromSnapshot, err)
		}
		src.lock = l
	}
	key, err := snapfile.LoadOrCreateKey(s.o.Root.SnapshotKey())
	if err != nil {
		src.release()
		return nil, err
	}
	if src.meta, err = snapfile.ReadMeta(src.dir.Dir, key); err != nil {
		src.release()
		return nil, fmt.Errorf("snapshot %s: %w", s.rec.FromSnapshot, err)
	}
	tok, err := readVerified(src.dir, snapfile.FileToken, src.meta)
	if err != nil {
		src.release()
		return nil, err
	}
	src.oldToken = tok
	return src, nil
}

// readVerified reads the small sealed file name of a snapshot whole and checks it.
func readVerified(dir layout.SnapDir, name string, m snapfile.Meta) ([]byte, error) {
	e, ok := m.File(name)
	if !ok {
		return nil, fmt.Errorf("snapshot has no %s: %w", name, snapfile.ErrTampered)
	}
	b, err := os.ReadFile(dir.Path(name))
	if err != nil {
		return nil, err
	}
	d := snapfile.NewStreamDigest()
	_, _ = d.Write(b)
	if d.Sum() != e.Digest {
		return nil, fmt.Errorf("snapshot %s: %w", name, snapfile.ErrTampered)
	}
	return b, nil
}

// restoreDisks gives the VM its writable disks from the snapshot: its own copies
// (reflinked where the filesystem can), checked against the seal while copying; a
// woken VM's disks are where they were and are only checked.
func (s *supervisor) restoreDisks(ctx context.Context, src *restoreSource) error {
	disks := []struct{ name, path string }{{snapfile.FileRootfs, s.dir.Rootfs()}}
	if s.rec.Spec.DataDiskMiB > 0 {
		disks = append(disks, struct{ name, path string }{snapfile.FileData, s.dir.Data()})
	}
	for _, d := range disks {
		e, ok := src.meta.File(d.name)
		if !ok {
			return fmt.Errorf("snapshot has no %s disk: %w", d.name, snapfile.ErrTampered)
		}
		if src.inPlace {
			got, err := snapfile.DigestFile(d.path)
			if err != nil {
				return err
			}
			if got != e.Digest {
				return fmt.Errorf("the %s disk changed while the VM slept: %w", d.name, snapfile.ErrTampered)
			}
			continue
		}
		_ = os.Remove(d.path)
		if err := snapfile.CopyVerified(ctx, src.dir.Path(d.name), d.path, e.Digest); err != nil {
			return fmt.Errorf("%s disk: %w", d.name, err)
		}
	}
	return nil
}

// memoryState opens the saved state for the hypervisor to read directly and checks
// it against the seal on another core meanwhile (reading the file a second time costs
// little: the hypervisor's reads bring it into the page cache, or ours do for it).
// The check runs beside the hypervisor's start and load, off the restore's critical
// path; the VM is resumed only after verified reports a match, so a modified state
// never runs a single instruction.
func (src *restoreSource) memoryState() (*os.File, error) {
	f, err := os.Open(src.dir.Path(snapfile.FileMemory))
	if err != nil {
		return nil, err
	}
	if err := src.checkSealed(snapfile.FileMemory); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// checkSealed checks the named saved-state files against the seal on another
// core, for verified to report. Firecracker opens its two files itself, so only
// the check is needed for it.
func (src *restoreSource) checkSealed(names ...string) error {
	want := make([]snapfile.Digest, len(names))
	for n, name := range names {
		e, ok := src.meta.File(name)
		if !ok {
			return fmt.Errorf("snapshot has no %s file: %w", name, snapfile.ErrTampered)
		}
		want[n] = e.Digest
	}
	src.memCheck = make(chan error, 1)
	go func() {
		begin := time.Now()
		err := func() error {
			for n, name := range names {
				got, err := snapfile.DigestFile(src.dir.Path(name))
				switch {
				case err != nil:
					return fmt.Errorf("saved state %s: %w", name, err)
				case got != want[n]:
					return fmt.Errorf("saved state %s: %w", name, snapfile.ErrTampered)
				}
			}
			return nil
		}()
		src.memCheckTook = time.Since(begin) // before the send, which orders it for verified's caller
		src.memCheck <- err
	}()
	return nil
}

// verified waits for the memory state's check (once; later calls return its result).
func (src *restoreSource) verified(ctx context.Context) error {
	if src.memCheck == nil {
		return errors.New("memory state was never opened")
	}
	if !src.memChecked {
		select {
		case src.memErr = <-src.memCheck:
			src.memChecked = true
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return src.memErr
}

// identify makes the restored guest this VM: the agent is reached with the
// snapshot's token, takes on the new drives' identity and token, and the network
// learns the new MAC and address.
func (s *supervisor) identify(ctx context.Context, oldToken []byte) error {
	entropy := make([]byte, 64)
	if _, err := rand.Read(entropy); err != nil {
		return err
	}
	// The guest's clock went on from where it stood when the snapshot was taken, as
	// if no time had passed. Authenticating with the time it believes it is saves the
	// round trip of a challenge (one the agent still makes if the guess is off).
	// The identify itself sets the clock to the host's.
	var opts []client.Option
	if s.restore != nil && !s.restore.resumedAt.IsZero() {
		taken, resumed := s.restore.meta.CreatedAt, s.restore.resumedAt
		opts = append(opts, client.WithClock(func() time.Time { return taken.Add(time.Since(resumed)) }))
	}
	began := time.Now()
	steps, err := client.New(s.openAgent, oldToken, opts...).Identify(ctx, began, entropy, s.token)
	if err != nil {
		return fmt.Errorf("identify the restored guest: %w", err)
	}
	s.o.Log.Info("restored guest identified", "steps_ms", steps)
	s.agent = client.New(s.openAgent, s.token)
	// The clock the identify set is as old as the request was when the guest
	// read it: on a busy host, a second or more. Set it again then, over the
	// path the identify has warmed up.
	if time.Since(began) > staleClock {
		s.syncClock(ctx)
	}
	if s.tap != nil {
		if err := s.inst.Announce(ctx); err != nil {
			s.o.Log.Warn("announce", "err", err)
		}
	}
	return nil
}

// staleClock is how late an identify may be before the clock it set is set again.
const staleClock = 250 * time.Millisecond

// saveSnapshot saves the VM: vCPUs stopped, device and memory state streamed to the
// snapshot directory, the writable disks captured at the same instant, the token,
// then the sealed metadata. The VM then goes on (snapshot, template) or stays paused
// for the caller to end it (sleep).
func (s *supervisor) saveSnapshot(ctx context.Context, req SnapshotRequest) (res SnapshotResult, err error) {
	dir := layout.SnapDir{Dir: req.Dir}
	key, err := snapfile.LoadOrCreateKey(s.o.Root.SnapshotKey())
	if err != nil {
		return res, err
	}
	bver, err := s.inst.Version(ctx)
	if err != nil {
		return res, err
	}
	cpu, err := snapfile.HostCPU()
	if err != nil {
		return res, err
	}
	wasRunning := !s.paused
	// The kernel does not change while the VM runs: it is sealed before the pause.
	kernel, err := s.saveKernel(ctx, dir, req.Kind)
	if err != nil {
		return res, err
	}
	begin := time.Now()
	if wasRunning {
		if err := s.inst.Pause(ctx); err != nil {
			return res, err
		}
		defer func() {
			if req.Kind != KindSleep || err != nil {
				if rerr := s.inst.Resume(context.WithoutCancel(ctx)); rerr != nil {
					s.o.Log.Error("resume after snapshot", "err", rerr)
				} else {
					s.syncClock(context.WithoutCancel(ctx))
				}
			}
		}()
	}
	t := time.Now()
	files, err := s.saveState(ctx, dir)
	if err != nil {
		return res, fmt.Errorf("save state: %w", err)
	}
	res.SaveMs = ms(time.Since(t))
	t = time.Now()
	disks := []struct{ name, path string }{{snapfile.FileRootfs, s.dir.Rootfs()}}
	if s.rec.Spec.DataDiskMiB > 0 {
		disks = append(disks, struct{ name, path string }{snapfile.FileData, s.dir.Data()})
	}
	for _, d := range disks {
		var dg snapfile.Digest
		if req.Kind == KindSleep {
			// The disks stay where they are; the seal says what they must hold on wake.
			dg, err = snapfile.DigestFile(d.path)
		} else {
			dg, err = snapfile.CopyDigest(ctx, d.path, dir.Path(d.name))
		}
		if err != nil {
			return res, fmt.Errorf("%s disk: %w", d.name, err)
		}
		files = append(files, snapfile.FileEntry{Name: d.name, Digest: dg})
	}
	res.DisksMs = ms(time.Since(t))
	files = append(files, kernel...)
	tokD, err := saveTo(dir.Path(snapfile.FileToken), func(w io.Writer) error { _, err := w.Write(s.token); return err })
	if err != nil {
		return res, err
	}
	files = append(files, snapfile.FileEntry{Name: snapfile.FileToken, Digest: tokD})
	if wasRunning && req.Kind != KindSleep {
		res.PausedMs = ms(time.Since(begin))
	}
	meta := snapfile.Meta{
		Format: snapfile.Format, ID: req.ID, Name: req.Name, Kind: req.Kind, Source: s.rec.Spec.Name,
		CreatedAt: time.Now().UTC(), MvmVersion: version.String(), AgentProto: proto.Version,
		Backend: s.rec.Backend, BackendVersion: bver, Accel: s.accel.Name,
		CPUModel: cpu.Model, CPUFlags: cpu.Flags,
		ImageDigest: s.rec.ImageRef, Kernel: s.rec.Kernel,
		CPUs: s.rec.Spec.CPUs, MemoryMiB: s.rec.Spec.MemoryMiB, DataDiskMiB: s.rec.Spec.DataDiskMiB,
		NIC: s.tap != nil, NICNoGuestAnnounce: s.tap != nil && !s.nicGuestAnnounce(), Jailed: s.rec.Spec.Jailer, Files: files,
	}
	if err = snapfile.WriteMeta(dir.Dir, key, meta); err != nil {
		return res, err
	}
	res.Meta = meta
	res.SizeBytes = layout.DiskUsage(dir.Dir)
	return res, nil
}

// saveState saves the paused VM's device and memory state into dir: QEMU's as
// one stream, Firecracker's as the two files it writes itself.
func (s *supervisor) saveState(ctx context.Context, dir layout.SnapDir) ([]snapfile.FileEntry, error) {
	fc, ok := s.inst.(*firecracker.Instance)
	if !ok {
		d, err := saveTo(dir.Path(snapfile.FileMemory), func(w io.Writer) error { return s.inst.SaveState(ctx, w) })
		if err != nil {
			return nil, err
		}
		return []snapfile.FileEntry{{Name: snapfile.FileMemory, Digest: d}}, nil
	}
	names := []string{snapfile.FileState, snapfile.FileMemory}
	removeAll := func() {
		for _, n := range names {
			_ = os.Remove(dir.Path(n))
		}
	}
	if err := fc.CreateSnapshot(ctx, dir.Path(snapfile.FileState), dir.Path(snapfile.FileMemory)); err != nil {
		removeAll()
		return nil, err
	}
	var files []snapfile.FileEntry
	for _, n := range names {
		if err := os.Chmod(dir.Path(n), 0o600); err != nil {
			removeAll()
			return nil, err
		}
		d, err := snapfile.DigestFile(dir.Path(n))
		if err != nil {
			removeAll()
			return nil, err
		}
		files = append(files, snapfile.FileEntry{Name: n, Digest: d})
	}
	return files, nil
}

// saveTo writes a new snapshot file (0600) through fn and returns its digest.
func saveTo(path string, fn func(io.Writer) error) (snapfile.Digest, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return snapfile.Digest{}, err
	}
	d := snapfile.NewStreamDigest()
	err = fn(io.MultiWriter(f, d))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return snapfile.Digest{}, err
	}
	return d.Sum(), nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
