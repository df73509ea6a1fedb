package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

// SnapshotReport compares starting a VM from a snapshot with booting it.
type SnapshotReport struct {
	Runs          int     `json:"runs"`
	Accel         string  `json:"accel"`
	Network       string  `json:"network"`
	ColdBoot      Series  `json:"cold_boot"`
	Create        Series  `json:"snapshot_create"`
	SnapshotBytes int64   `json:"snapshot_bytes"`
	Restore       Series  `json:"restore"`
	Ratio         float64 `json:"ratio"` // restore median / cold boot median
	Parallel      int     `json:"parallel"`
	ParallelMs    float64 `json:"parallel_total_ms"`
	ParallelRate  float64 `json:"parallel_vms_per_second"`
}

// SnapshotOptions configure the snapshot benchmark.
type SnapshotOptions struct {
	Root     layout.Root
	Mvmctl   string
	Runs     int
	Parallel int
	Network  string // "none" or a network name
	Progress func(string)
}

// Snapshot measures, with the mvmctl binary as a user runs it: cold boots to agent
// ready, snapshot creation of a running VM (time and size), restores to agent ready
// (identity taken: the command returns when the clone answers as itself), and
// Parallel restores started at once.
func Snapshot(ctx context.Context, o SnapshotOptions) (SnapshotReport, error) {
	rep := SnapshotReport{Runs: o.Runs, Accel: qemu.DetectAccel().Name, Network: o.Network, Parallel: o.Parallel}
	tag := fmt.Sprintf("bench%d", os.Getpid())
	mvmctl := func(args ...string) ([]byte, error) {
		out, err := exec.CommandContext(ctx, o.Mvmctl, append([]string{"--root", o.Root.Dir}, args...)...).CombinedOutput()
		if err != nil {
			return out, fmt.Errorf("mvmctl %v: %w: %s", args, err, out)
		}
		return out, nil
	}
	timed := func(args ...string) (time.Duration, error) {
		start := time.Now()
		_, err := mvmctl(args...)
		return time.Since(start), err
	}
	progress := func(f string, a ...any) {
		if o.Progress != nil {
			o.Progress(fmt.Sprintf(f, a...))
		}
	}
	src := tag + "-src"
	snap := tag + "-snap"
	defer func() {
		_, _ = exec.Command(o.Mvmctl, "--root", o.Root.Dir, "down", "-t", "0", src).CombinedOutput()
		_, _ = exec.Command(o.Mvmctl, "--root", o.Root.Dir, "snapshot", "rm", snap).CombinedOutput()
	}()

	var cold, create, restore []time.Duration
	for i := -1; i < o.Runs; i++ { // one warm-up round
		name := fmt.Sprintf("%s-cold-%d", tag, i+1)
		d, err := timed("up", "-d", "--network", o.Network, "--name", name)
		if err != nil {
			return rep, err
		}
		if _, err := mvmctl("down", "-t", "0", name); err != nil {
			return rep, err
		}
		if i >= 0 {
			cold = append(cold, d)
			progress("cold boot %d: %v", i+1, d.Round(time.Millisecond))
		}
	}
	if _, err := mvmctl("up", "-d", "--network", o.Network, "--name", src); err != nil {
		return rep, err
	}
	for i := 0; i < o.Runs; i++ {
		name := fmt.Sprintf("%s-%d", snap, i)
		if i == o.Runs-1 {
			name = snap // the one kept for the restores
		}
		d, err := timed("snapshot", "create", src, "--name", name)
		if err != nil {
			return rep, err
		}
		create = append(create, d)
		progress("snapshot %d: %v", i+1, d.Round(time.Millisecond))
		if name != snap {
			if _, err := mvmctl("snapshot", "rm", name); err != nil {
				return rep, err
			}
		}
	}
	out, err := mvmctl("snapshot", "ls", "--json")
	if err != nil {
		return rep, err
	}
	var snaps []struct {
		Name      string `json:"name"`
		SizeBytes int64  `json:"size_bytes"`
	}
	if err := json.Unmarshal(out, &snaps); err != nil {
		return rep, err
	}
	for _, s := range snaps {
		if s.Name == snap {
			rep.SnapshotBytes = s.SizeBytes
		}
	}
	// Restores are timed as the cold boots were: with no other VM running (a source
	// left running would take CPU from them under emulation). The integration tests
	// check that a restore leaves a running source undisturbed.
	if _, err := mvmctl("down", "-t", "0", src); err != nil {
		return rep, err
	}
	for i := -1; i < o.Runs; i++ {
		name := fmt.Sprintf("%s-r-%d", tag, i+1)
		d, err := timed("up", "-d", "--snapshot", snap, "--name", name)
		if err != nil {
			return rep, err
		}
		if _, err := mvmctl("down", "-t", "0", name); err != nil {
			return rep, err
		}
		if i >= 0 {
			restore = append(restore, d)
			progress("restore %d: %v", i+1, d.Round(time.Millisecond))
		}
	}
	if o.Parallel > 0 {
		var wg sync.WaitGroup
		errs := make([]error, o.Parallel)
		start := time.Now()
		for i := 0; i < o.Parallel; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = mvmctl("up", "-d", "--snapshot", snap, "--name", fmt.Sprintf("%s-p-%d", tag, i))
			}()
		}
		wg.Wait()
		total := time.Since(start)
		for i := 0; i < o.Parallel; i++ {
			_, _ = mvmctl("down", "-t", "0", fmt.Sprintf("%s-p-%d", tag, i))
		}
		for _, err := range errs {
			if err != nil {
				return rep, err
			}
		}
		rep.ParallelMs = float64(total.Microseconds()) / 1000
		rep.ParallelRate = float64(o.Parallel) / total.Seconds()
		progress("%d restores at once: %v", o.Parallel, total.Round(time.Millisecond))
	}
	rep.ColdBoot = newSeries("cold boot (mvmctl up -d)", cold)
	rep.Create = newSeries("snapshot create (running VM)", create)
	rep.Restore = newSeries("restore (mvmctl up -d --snapshot)", restore)
	if rep.ColdBoot.Median > 0 {
		rep.Ratio = rep.Restore.Median / rep.ColdBoot.Median
	}
	return rep, nil
}
