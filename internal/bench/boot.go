// Package bench measures mvm against baselines run in the same process and the same
// minute, and reports ratios rather than asserting times.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"syscall"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/client"
	"github.com/mvm-dev/mvm/internal/agent/hybrid"
	"github.com/mvm-dev/mvm/internal/agent/link"
	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/drive"
	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/supervisor"
	"github.com/mvm-dev/mvm/internal/vm"
	"github.com/mvm-dev/mvm/internal/vmm"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

// Series is one measured quantity.
type Series struct {
	Name    string    `json:"name"`
	Samples []float64 `json:"samples_ms"`
	Median  float64   `json:"median_ms"`
	Min     float64   `json:"min_ms"`
	Max     float64   `json:"max_ms"`
}

func newSeries(name string, d []time.Duration) Series {
	s := Series{Name: name}
	for _, x := range d {
		s.Samples = append(s.Samples, float64(x.Microseconds())/1000)
	}
	sorted := append([]float64(nil), s.Samples...)
	sort.Float64s(sorted)
	if n := len(sorted); n > 0 {
		s.Min, s.Max = sorted[0], sorted[n-1]
		s.Median = sorted[n/2]
		if n%2 == 0 {
			s.Median = (sorted[n/2-1] + sorted[n/2]) / 2
		}
	}
	return s
}

// BootReport compares `mvmctl up -d` with QEMU started by hand.
type BootReport struct {
	Runs     int     `json:"runs"`
	Accel    string  `json:"accel"`
	Baseline Series  `json:"baseline"`
	MVM      Series  `json:"mvm"`
	MVMNet   Series  `json:"mvm_default_network,omitempty"`
	Ratio    float64 `json:"ratio"` // mvm median / baseline median
}

// BootOptions configure the boot benchmark.
type BootOptions struct {
	Root     layout.Root
	Mvmctl   string // the mvmctl binary to time
	Runs     int
	Network  bool // also time `up -d` with the default network (needs root)
	Progress func(string)
}

// Boot measures, alternating so both see the same machine state: (a) QEMU started by
// hand with the image's kernel and initramfs and freshly made drives, until the agent
// answers an authenticated ping over the link; (b) `mvmctl up -d --network none`,
// which returns at the same point. One untimed round warms the page cache first.
func Boot(ctx context.Context, o BootOptions) (BootReport, error) {
	img, err := (image.Store{Dir: o.Root.Images()}).Get(image.DefaultName)
	if err != nil {
		return BootReport{}, err
	}
	backend, err := qemu.New()
	if err != nil {
		return BootReport{}, err
	}
	rep := BootReport{Runs: o.Runs, Accel: backend.Accel()}
	var base, mvm, mvmNet []time.Duration
	for i := -1; i < o.Runs; i++ {
		// Alternate which goes first, so neither always inherits the other's aftermath.
		var b, m time.Duration
		runBase := func() error {
			var err error
			if b, err = handBoot(ctx, o.Root, img, backend.AccelInfo()); err != nil {
				return fmt.Errorf("baseline: %w", err)
			}
			return nil
		}
		runMVM := func() error {
			var err error
			m, err = mvmctlUp(ctx, o, fmt.Sprintf("bench-%d-%d", os.Getpid(), i), "none")
			return err
		}
		first, second := runBase, runMVM
		if i%2 != 0 {
			first, second = runMVM, runBase
		}
		if err := first(); err != nil {
			return rep, err
		}
		if err := second(); err != nil {
			return rep, err
		}
		var n time.Duration
		if o.Network {
			if n, err = mvmctlUp(ctx, o, fmt.Sprintf("bench-net-%d-%d", os.Getpid(), i), vm.NetworkDefault); err != nil {
				return rep, err
			}
		}
		if i < 0 {
			continue // warm-up
		}
		base, mvm = append(base, b), append(mvm, m)
		if o.Network {
			mvmNet = append(mvmNet, n)
		}
		if o.Progress != nil {
			o.Progress(fmt.Sprintf("run %d: by hand %v, mvmctl up %v", i+1, b.Round(time.Millisecond), m.Round(time.Millisecond)))
		}
	}
	rep.Baseline = newSeries("qemu by hand", base)
	rep.MVM = newSeries("mvmctl up -d --network none", mvm)
	if o.Network {
		rep.MVMNet = newSeries("mvmctl up -d (default network)", mvmNet)
	}
	if rep.Baseline.Median > 0 {
		rep.Ratio = rep.MVM.Median / rep.Baseline.Median
	}
	return rep, nil
}

func mvmctlUp(ctx context.Context, o BootOptions, name, network string) (time.Duration, error) {
	start := time.Now()
	// QEMU, as the baseline is: auto would pick Firecracker where it can run.
	out, err := exec.CommandContext(ctx, o.Mvmctl, "--root", o.Root.Dir, "up", "-d", "--name", name, "--network", network,
		"--hypervisor", "qemu").CombinedOutput()
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("mvmctl up: %w: %s", err, out)
	}
	if out, err := exec.CommandContext(ctx, o.Mvmctl, "--root", o.Root.Dir, "down", name).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("mvmctl down: %w: %s", err, out)
	}
	return d, nil
}

// handBoot starts QEMU directly with the same kernel, initramfs, drives and
// arguments mvm would use, and no mvm process in between, and returns the time from
// exec to the agent's first authenticated answer.
func handBoot(ctx context.Context, root layout.Root, img image.Image, accel qemu.Accel) (time.Duration, error) {
	h, err := startHandVM(ctx, root, img, accel, handVMOptions{MemoryMiB: 512})
	if err != nil {
		return 0, err
	}
	defer h.Close()
	return h.Ready, nil
}

type handVMOptions struct {
	MemoryMiB  int64
	ExtraPorts []string
	// Prepare may change the VM's private rootfs copy before boot.
	Prepare func(rootfs string) error
}

// handVM is a VM started without mvm's supervisor: the baseline of the benchmarks.
type handVM struct {
	Ready    time.Duration // exec to the first authenticated answer
	Agent    *client.Client
	Console  net.Conn
	Ports    []net.Conn // one per ExtraPorts, in order
	dir      string
	cmd      *exec.Cmd
	sess     *link.Session
	conns    []net.Conn
	listener net.Listener
}

func startHandVM(ctx context.Context, root layout.Root, img image.Image, accel qemu.Accel, o handVMOptions) (*handVM, error) {
	dir, err := os.MkdirTemp(root.Dir, ".bench-")
	if err != nil {
		return nil, err
	}
	h := &handVM{dir: dir}
	fail := func(err error) (*handVM, error) {
		h.Close()
		return nil, err
	}
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	token := []byte(hex.EncodeToString(raw))
	rootfs, cfg, sec := filepath.Join(dir, "rootfs.ext4"), filepath.Join(dir, "config.ext4"), filepath.Join(dir, "secrets.ext4")
	if err := drive.CopySparse(img.Path(image.FileRootfs), rootfs); err != nil {
		return fail(err)
	}
	if o.Prepare != nil {
		if err := o.Prepare(rootfs); err != nil {
			return fail(err)
		}
	}
	if err := drive.MakeConfig(ctx, cfg, drive.ConfigData{Name: "bench", Hostname: "bench"}); err != nil {
		return fail(err)
	}
	if err := drive.MakeSecrets(ctx, sec, token); err != nil {
		return fail(err)
	}
	rec := vm.Record{Spec: vm.Spec{Name: "bench"}}
	cfgQ := vmm.Config{Name: "bench", CPUs: 1, MemoryMiB: o.MemoryMiB, Kernel: img.Path(image.FileKernel), Initrd: img.Path(image.FileInitrd),
		KernelArgs: supervisor.ContractArgs(rec), ExtraPorts: append([]string{proto.BulkPortName}, o.ExtraPorts...),
		Drives: []vmm.Drive{{ID: "vda", Path: rootfs}, {ID: "vdb", Path: cfg, ReadOnly: true}, {ID: "vdc", Path: sec, ReadOnly: true}}}
	var theirs []*os.File
	defer func() {
		for _, f := range theirs {
			f.Close()
		}
	}()
	for i := 0; i < 4+len(o.ExtraPorts); i++ {
		// The same channels as mvm's QEMU VMs get, so raw and mvm figures compare.
		q, c, err := qemu.SocketPair()
		if err != nil {
			return fail(err)
		}
		theirs = append(theirs, q)
		h.conns = append(h.conns, c)
	}
	fds := qemu.Fds{QMP: 3, Console: 4, Agent: 5, TAP: -1}
	for i := 0; i < 1+len(o.ExtraPorts); i++ {
		fds.Extra = append(fds.Extra, 6+i)
	}
	h.cmd = exec.Command(qemu.Binary, qemu.Args(cfgQ, accel, fds)...)
	h.cmd.ExtraFiles = theirs
	// Dies with the benchmark. PDEATHSIG follows the forking thread, so fork from one
	// that lives as long as the process (the main thread is locked by the runtime).
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine, after QEMU
		if err := h.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = h.cmd.Wait()
	}()
	if err := <-started; err != nil {
		return fail(err)
	}
	h.Console, h.Ports = h.conns[1], h.conns[3:]
	go func() { // drain the console so the guest never blocks on it
		buf := make([]byte, 4096)
		for {
			if _, err := h.Console.Read(buf); err != nil {
				return
			}
		}
	}()
	bctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if h.sess, err = link.Dial(bctx, h.conns[2], link.DialOptions{}); err != nil {
		return fail(err)
	}
	direct := client.New(func(ctx context.Context) (net.Conn, error) { return h.sess.Open(ctx) }, token)
	if _, err := direct.Ping(bctx); err != nil {
		return fail(err)
	}
	h.Ready = time.Since(start)
	// From here on, clients take the path mvmctl takes: a hybrid-vsock socket served
	// by the same code as the supervisor's, in front of the link.
	sock := filepath.Join(dir, "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		return fail(err)
	}
	h.listener = l
	bulk := hybrid.NewExclusive(h.conns[3])
	h.Ports = h.Ports[1:] // the bulk port is the first extra port, served here
	go hybrid.Serve(context.Background(), l, func(ctx context.Context, port uint32) (net.Conn, error) {
		if port == proto.BulkPort {
			return bulk.Attach()
		}
		return h.sess.Open(ctx)
	}, slog.New(slog.DiscardHandler))
	h.Agent = client.NewHybrid(sock, token)
	return h, nil
}

// Close stops QEMU and removes the VM's files.
func (h *handVM) Close() {
	if h.listener != nil {
		h.listener.Close()
	}
	if h.sess != nil {
		h.sess.Close()
	}
	if h.cmd != nil && h.cmd.Process != nil {
		_ = h.cmd.Process.Kill()
	}
	for _, c := range h.conns {
		c.Close()
	}
	_ = os.RemoveAll(h.dir)
}
