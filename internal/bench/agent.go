package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/client"
	"github.com/mvm-dev/mvm/internal/image"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/vmm/qemu"
)

// AgentOptions configure the agent benchmark.
type AgentOptions struct {
	Root     layout.Root
	Runs     int   // timed exec round trips of each agent
	SizeMiB  int64 // file size for mvm cp and the raw channel
	Repeat   int   // rounds of raw and mvm copies; medians are reported
	QGAMiB   int64 // file size for qemu-ga's file calls (it is ~20x slower)
	Progress func(string)
}

// Latency is a percentile summary in milliseconds.
type Latency struct {
	Name string  `json:"name"`
	P50  float64 `json:"p50_ms"`
	P99  float64 `json:"p99_ms"`
	Min  float64 `json:"min_ms"`
	N    int     `json:"n"`
}

// Transfer is one measured copy.
type Transfer struct {
	Name    string  `json:"name"`
	MiB     float64 `json:"mib"`
	Seconds float64 `json:"seconds"`
	MiBps   float64 `json:"mib_per_s"`
}

// AgentReport puts mvm-agent next to qemu-ga and the bare channel, measured in one VM.
type AgentReport struct {
	Accel          string     `json:"accel"`
	Latency        []Latency  `json:"latency"`
	Transfers      []Transfer `json:"transfers"`
	ExecVsQGA      float64    `json:"exec_p50_ratio_vs_qemu_ga"` // target <= 0.5
	CopyInVsRaw    float64    `json:"cp_in_ratio_vs_raw"`        // target >= 0.6
	CopyOutVsRaw   float64    `json:"cp_out_ratio_vs_raw"`       // target >= 0.6
	AgentRSSBefore int64      `json:"agent_rss_kib_before"`
	AgentRSSAfter  int64      `json:"agent_rss_kib_after"`
}

const (
	portQGA    = "org.qemu.guest_agent.0"
	portRawIn  = "mvm.raw.in"
	portRawOut = "mvm.raw.out"
)

// extraPorts are qemu-ga's port, one raw-in port per round (the end of a raw copy in
// is the host hanging up the port, which cannot be undone) and one raw-out port.
func extraPorts(rounds int) []string {
	ports := []string{portQGA}
	for i := 0; i < rounds; i++ {
		ports = append(ports, fmt.Sprintf("%s.%d", portRawIn, i))
	}
	return append(ports, portRawOut)
}

// Agent boots one VM by hand with mvm-agent (PID 1), QEMU's qemu-ga, and two bare
// virtio-serial ports, and measures, in this order so the latency figures come from
// a fresh VM: exec round trips of /bin/true through each agent; then copies of a file
// each way through the bare channel (dd/cat in the guest), mvm cp, and qemu-ga's
// guest-file-write/read; and the agent's memory before and after.
func Agent(ctx context.Context, o AgentOptions) (AgentReport, error) {
	var rep AgentReport
	step := func(s string) {
		if o.Progress != nil {
			o.Progress(s)
		}
	}
	img, err := (image.Store{Dir: o.Root.Images()}).Get(image.DefaultName)
	if err != nil {
		return rep, err
	}
	backend, err := qemu.New()
	if err != nil {
		return rep, err
	}
	rep.Accel = backend.Accel()
	step("preparing qemu-guest-agent for the guest")
	qga, err := qemuGuestAgent(ctx, o.Root)
	if err != nil {
		return rep, err
	}
	step("booting the benchmark VM")
	h, err := startHandVM(ctx, o.Root, img, backend.AccelInfo(), handVMOptions{
		MemoryMiB:  1024,
		ExtraPorts: extraPorts(o.Repeat),
		Prepare:    func(rootfs string) error { return injectFiles(ctx, rootfs, qga) },
	})
	if err != nil {
		return rep, err
	}
	defer h.Close()
	cl := h.Agent
	run := func(script string) (string, error) {
		var out, errb bytes.Buffer
		ex, err := cl.Exec(ctx, client.ExecOptions{Argv: []string{"sh", "-c", script}, Stdout: &out, Stderr: &errb})
		if err == nil && ex.Code != 0 {
			err = fmt.Errorf("guest: %s: exit %d: %s", script, ex.Code, errb.String())
		}
		return out.String(), err
	}
	portDev := func(name string) (string, error) {
		out, err := run(`for d in /sys/class/virtio-ports/vport*; do [ "$(cat $d/name)" = "` + name + `" ] && echo /dev/${d##*/}; done; true`)
		if err == nil && strings.TrimSpace(out) == "" {
			err = fmt.Errorf("port %s not found in the guest", name)
		}
		return strings.TrimSpace(out), err
	}
	qgaDev, err := portDev(portQGA)
	if err != nil {
		return rep, err
	}
	if _, err := run("mkdir -p /var && ln -sfn /run /var/run; qemu-ga -d -m virtio-serial -p " + qgaDev + " -t /run -f /run/qemu-ga.pid"); err != nil {
		return rep, fmt.Errorf("start qemu-ga: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	q, err := newQGA(sctx, h.Ports[0])
	cancel()
	if err != nil {
		return rep, err
	}
	rep.AgentRSSBefore, _ = agentRSS(run)

	step(fmt.Sprintf("exec /bin/true: %d round trips through each agent", o.Runs))
	mvmLat, err := timeN(o.Runs, func() error {
		ex, err := cl.Exec(ctx, client.ExecOptions{Argv: []string{"/bin/true"}})
		if err == nil && ex.Code != 0 {
			err = fmt.Errorf("exit %d", ex.Code)
		}
		return err
	})
	if err != nil {
		return rep, fmt.Errorf("mvm-agent exec: %w", err)
	}
	qgaLat, err := timeN(o.Runs, func() error {
		code, err := q.exec("/bin/true")
		if err == nil && code != 0 {
			err = fmt.Errorf("exit %d", code)
		}
		return err
	})
	if err != nil {
		return rep, fmt.Errorf("qemu-ga exec: %w", err)
	}
	rep.Latency = []Latency{latency("mvm-agent exec /bin/true", mvmLat), latency("qemu-ga guest-exec + status /bin/true", qgaLat)}
	rep.ExecVsQGA = rep.Latency[0].P50 / rep.Latency[1].P50

	// The file every copy sends: random, so nothing along the way can shortcut it.
	src := filepath.Join(h.dir, "payload")
	if err := writeRandom(src, o.SizeMiB<<20); err != nil {
		return rep, err
	}
	size := o.SizeMiB << 20

	// Each copy runs Repeat times, alternating raw and mvm so both see the machine in
	// the same state, and the median rate counts: this machine's neighbours are noisy.
	outDev, err := portDev(portRawOut)
	if err != nil {
		return rep, err
	}
	var rawIns, rawOuts, cpIns, cpOuts []Transfer
	for i := 0; i < o.Repeat; i++ {
		step(fmt.Sprintf("round %d of %d: raw channel and mvm cp, each way", i+1, o.Repeat))
		inDev, err := portDev(fmt.Sprintf("%s.%d", portRawIn, i))
		if err != nil {
			return rep, err
		}
		d, err := rawIn(ctx, cl, h.Ports[1+i], inDev, src)
		if err != nil {
			return rep, fmt.Errorf("raw in: %w", err)
		}
		rawIns = append(rawIns, transfer("raw channel in (dd into tmpfs)", size, d))
		d, err = rawOut(ctx, cl, h.Ports[1+o.Repeat], outDev, "/tmp/raw.bin", size)
		if err != nil {
			return rep, fmt.Errorf("raw out: %w", err)
		}
		rawOuts = append(rawOuts, transfer("raw channel out (cat from tmpfs)", size, d))
		if _, err := run("rm -f /tmp/raw.bin"); err != nil {
			return rep, err
		}
		start := time.Now()
		if _, err := cl.CopyIn(ctx, src, "/tmp/cp.bin"); err != nil {
			return rep, fmt.Errorf("cp in: %w", err)
		}
		cpIns = append(cpIns, transfer("mvm cp in (into tmpfs)", size, time.Since(start)))
		back := filepath.Join(h.dir, "back")
		start = time.Now()
		if _, err := cl.CopyOut(ctx, "/tmp/cp.bin", back); err != nil {
			return rep, fmt.Errorf("cp out: %w", err)
		}
		cpOuts = append(cpOuts, transfer("mvm cp out (from tmpfs)", size, time.Since(start)))
		if err := sameFile(src, back); err != nil {
			return rep, err
		}
		_ = os.Remove(back)
		if _, err := run("rm -f /tmp/cp.bin"); err != nil {
			return rep, err
		}
	}
	rawInT, rawOutT, cpIn, cpOut := median(rawIns), median(rawOuts), median(cpIns), median(cpOuts)
	rep.Transfers = append(rep.Transfers, rawInT, rawOutT, cpIn, cpOut)
	rep.CopyInVsRaw, rep.CopyOutVsRaw = cpIn.MiBps/rawInT.MiBps, cpOut.MiBps/rawOutT.MiBps
	add := func(name string, bytes int64, d time.Duration) {
		t := transfer(name, bytes, d)
		rep.Transfers = append(rep.Transfers, t)
		step(fmt.Sprintf("%s: %.1f MiB/s", name, t.MiBps))
	}

	qsize := o.QGAMiB << 20
	step(fmt.Sprintf("qemu-ga guest-file-write, %d MiB in 4 MiB calls", o.QGAMiB))
	f, err := os.Open(src)
	if err != nil {
		return rep, err
	}
	start := time.Now()
	n, err := q.writeFile("/tmp/qga.bin", io.LimitReader(f, qsize), 4<<20)
	f.Close()
	if err != nil {
		return rep, fmt.Errorf("qemu-ga write: %w", err)
	}
	add("qemu-ga guest-file-write (4 MiB calls)", n, time.Since(start))
	step(fmt.Sprintf("qemu-ga guest-file-read, %d MiB in 4 MiB calls", o.QGAMiB))
	start = time.Now()
	n, err = q.readFile("/tmp/qga.bin", io.Discard, 4<<20)
	if err != nil {
		return rep, fmt.Errorf("qemu-ga read: %w", err)
	}
	add("qemu-ga guest-file-read (4 MiB calls)", n, time.Since(start))
	rep.AgentRSSAfter, _ = agentRSS(run)
	return rep, nil
}

func transfer(name string, bytes int64, d time.Duration) Transfer {
	return Transfer{Name: name, MiB: float64(bytes) / (1 << 20), Seconds: d.Seconds(), MiBps: float64(bytes) / (1 << 20) / d.Seconds()}
}

// median returns the run with the median rate (n is small and odd by default).
func median(ts []Transfer) Transfer {
	s := append([]Transfer(nil), ts...)
	sort.Slice(s, func(i, j int) bool { return s[i].MiBps < s[j].MiBps })
	m := s[len(s)/2]
	m.Name = fmt.Sprintf("%s, median of %d", m.Name, len(s))
	return m
}

func timeN(n int, fn func() error) ([]time.Duration, error) {
	for i := 0; i < 10; i++ { // warm-up: the translation cache, the page cache
		if err := fn(); err != nil {
			return nil, err
		}
	}
	out := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		st := time.Now()
		if err := fn(); err != nil {
			return nil, err
		}
		out = append(out, time.Since(st))
	}
	return out, nil
}

func latency(name string, d []time.Duration) Latency {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	ms := func(x time.Duration) float64 { return float64(x.Microseconds()) / 1000 }
	return Latency{Name: name, P50: ms(d[len(d)/2]), P99: ms(d[(len(d)*99)/100]), Min: ms(d[0]), N: len(d)}
}

// rawIn measures the bare channel into the guest: dd reads the port into a tmpfs file
// while the host writes the payload, then half-closes (a full close would drop what
// the socket still holds) and waits for dd to see the end.
func rawIn(ctx context.Context, cl *client.Client, port net.Conn, dev, src string) (time.Duration, error) {
	f, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	done := make(chan error, 1)
	go func() {
		var errb bytes.Buffer
		ex, err := cl.Exec(ctx, client.ExecOptions{Argv: []string{"dd", "if=" + dev, "of=/tmp/raw.bin", "bs=1M"}, Stderr: &errb})
		if err == nil && ex.Code != 0 {
			err = fmt.Errorf("dd: exit %d: %s", ex.Code, errb.String())
		}
		done <- err
	}()
	time.Sleep(300 * time.Millisecond) // dd opens the port
	start := time.Now()
	if _, err := io.Copy(port, f); err != nil {
		return 0, err
	}
	if err := port.(*net.UnixConn).CloseWrite(); err != nil {
		return 0, err
	}
	if err := <-done; err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// rawOut measures the bare channel out of the guest: cat (sendfile into the port) of
// the file rawIn left, read on the host until all of it arrived.
func rawOut(ctx context.Context, cl *client.Client, port net.Conn, dev, path string, size int64) (time.Duration, error) {
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		ex, err := cl.Exec(ctx, client.ExecOptions{Argv: []string{"sh", "-c", "cat " + path + " > " + dev}})
		if err == nil && ex.Code != 0 {
			err = fmt.Errorf("cat: exit %d", ex.Code)
		}
		done <- err
	}()
	if _, err := io.CopyN(io.Discard, port, size); err != nil {
		return 0, err
	}
	d := time.Since(start)
	return d, <-done
}

func agentRSS(run func(string) (string, error)) (int64, error) {
	out, err := run("grep VmRSS /proc/1/status")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(out)
	if len(f) < 2 {
		return 0, errors.New("no VmRSS")
	}
	return strconv.ParseInt(f[1], 10, 64)
}

func writeRandom(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if _, err := io.CopyN(w, rand.Reader, size); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func sameFile(a, b string) error {
	x, err := os.ReadFile(a)
	if err != nil {
		return err
	}
	y, err := os.ReadFile(b)
	if err != nil {
		return err
	}
	if !bytes.Equal(x, y) {
		return errors.New("the file copied out differs from the one copied in")
	}
	return nil
}

// guestFile is a host file to place in the guest's rootfs.
type guestFile struct{ host, guest string }

// qemuGuestAgent fetches Debian's qemu-guest-agent (once, into the cache, never
// installed) and lists qemu-ga with the host libraries it links against.
func qemuGuestAgent(ctx context.Context, root layout.Root) ([]guestFile, error) {
	dir := filepath.Join(root.Cache(), "qemu-guest-agent")
	bin := filepath.Join(dir, "usr", "sbin", "qemu-ga")
	if _, err := os.Stat(bin); err != nil {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		download := func() ([]byte, error) {
			cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", "qemu-guest-agent")
			cmd.Dir = dir
			return cmd.CombinedOutput()
		}
		if _, err := download(); err != nil {
			// Stale package lists name files the mirror no longer has.
			_ = exec.CommandContext(ctx, "apt-get", "update", "-q").Run()
			if out, err := download(); err != nil {
				return nil, fmt.Errorf("apt-get download qemu-guest-agent: %w: %s", err, out)
			}
		}
		debs, _ := filepath.Glob(filepath.Join(dir, "qemu-guest-agent_*.deb"))
		if len(debs) == 0 {
			return nil, errors.New("apt-get download left no qemu-guest-agent .deb")
		}
		if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[len(debs)-1], dir).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("unpack qemu-guest-agent: %w: %s", err, out)
		}
	}
	out, err := exec.CommandContext(ctx, "ldd", bin).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("ldd qemu-ga: %w: %s", err, out)
	}
	files := []guestFile{{bin, "/usr/sbin/qemu-ga"}}
	libRE := regexp.MustCompile(`=> (/\S+)`)
	loaderRE := regexp.MustCompile(`^\s*(/\S*ld-linux\S*)`)
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "not found") {
			return nil, fmt.Errorf("qemu-ga needs a library this host lacks: %s", strings.TrimSpace(line))
		}
		if m := libRE.FindStringSubmatch(line); m != nil {
			files = append(files, guestFile{m[1], "/lib/x86_64-linux-gnu/" + filepath.Base(m[1])})
		} else if m := loaderRE.FindStringSubmatch(line); m != nil {
			files = append(files, guestFile{m[1], "/lib64/" + filepath.Base(m[1])})
		}
	}
	return files, nil
}

// injectFiles writes host files into an ext4 image with debugfs (no mounting).
func injectFiles(ctx context.Context, img string, files []guestFile) error {
	var script strings.Builder
	dirs := map[string]bool{}
	for _, f := range files {
		for d := filepath.Dir(f.guest); d != "/" && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	var sorted []string
	for d := range dirs {
		sorted = append(sorted, d)
	}
	sort.Strings(sorted) // parents first
	for _, d := range sorted {
		fmt.Fprintf(&script, "mkdir %s\n", d)
	}
	for _, f := range files {
		real, err := filepath.EvalSymlinks(f.host)
		if err != nil {
			return err
		}
		fmt.Fprintf(&script, "write %s %s\nsif %s mode 0100755\n", real, f.guest, f.guest)
	}
	scriptPath := img + ".debugfs"
	if err := os.WriteFile(scriptPath, []byte(script.String()), 0o600); err != nil {
		return err
	}
	defer os.Remove(scriptPath)
	if out, err := exec.CommandContext(ctx, "debugfs", "-w", "-f", scriptPath, img).CombinedOutput(); err != nil {
		return fmt.Errorf("debugfs: %w: %s", err, out)
	}
	return nil
}
