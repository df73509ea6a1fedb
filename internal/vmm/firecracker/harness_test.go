package firecracker

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mvm-dev/mvm/internal/vmm"
	"github.com/mvm-dev/mvm/internal/vmm/firecracker/fakefc"
)

// consoleBanner is what a fake process writes to its serial console.
const consoleBanner = "fake firecracker serial console\n"

// fakeProc stands in for a firecracker process: its API is a fakefc server.
type fakeProc struct {
	srv     *fakefc.Server // nil when the "process" died before serving
	console *os.File
	once    sync.Once
	done    chan struct{}
	code    int
}

func (p *fakeProc) PID() int              { return 4242 }
func (p *fakeProc) StartTime() uint64     { return 7 }
func (p *fakeProc) Done() <-chan struct{} { return p.done }
func (p *fakeProc) ExitCode() int         { return p.code }
func (p *fakeProc) Kill() error           { p.exit(-1); return nil }

// exit ends the fake as the process ending would: the API goes away and the
// console's other end closes.
func (p *fakeProc) exit(code int) {
	p.once.Do(func() {
		p.code = code
		if p.srv != nil {
			p.srv.Close()
		}
		p.console.Close()
		close(p.done)
	})
}

// harness launches fake processes for a Backend and keeps what it launched.
type harness struct {
	t        *testing.T
	dir      string
	fakeOpts []fakefc.Option
	noServer bool // the process exits with status 1 before serving its API

	mu    sync.Mutex
	specs []launchSpec
	procs []*fakeProc
}

func newHarness(t *testing.T, fakeOpts ...fakefc.Option) *harness {
	t.Helper()
	// Not t.TempDir: its paths can pass the 108-byte limit of a socket path.
	dir, err := os.MkdirTemp("", "fc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return &harness{t: t, dir: dir, fakeOpts: fakeOpts}
}

func (h *harness) backend() *Backend {
	return &Backend{binary: "/nonexistent/firecracker", opts: Options{RunDir: h.dir}, launch: h.launch}
}

func (h *harness) launch(spec launchSpec) (process, error) {
	fd, err := unix.Dup(int(spec.Console.Fd()))
	if err != nil {
		return nil, err
	}
	p := &fakeProc{console: os.NewFile(uintptr(fd), "fake-console"), done: make(chan struct{})}
	if _, err := p.console.WriteString(consoleBanner); err != nil {
		p.console.Close()
		return nil, err
	}
	if h.noServer {
		p.exit(1)
	} else {
		opts := append([]fakefc.Option{fakefc.WithSocketPath(spec.APISocket), fakefc.WithInstanceID(spec.ID)}, h.fakeOpts...)
		p.srv = fakefc.New(h.t, opts...)
	}
	h.t.Cleanup(func() { p.exit(-1) })
	h.mu.Lock()
	defer h.mu.Unlock()
	h.specs = append(h.specs, spec)
	h.procs = append(h.procs, p)
	return p, nil
}

func (h *harness) proc(i int) *fakeProc {
	h.mu.Lock()
	defer h.mu.Unlock()
	if i >= len(h.procs) {
		h.t.Fatalf("no process %d launched (have %d)", i, len(h.procs))
	}
	return h.procs[i]
}

func (h *harness) server(i int) *fakefc.Server { return h.proc(i).srv }

// file makes an empty file in the harness directory, for the fake's path checks.
func (h *harness) file(name string) string {
	h.t.Helper()
	p := filepath.Join(h.dir, name)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		h.t.Fatal(err)
	}
	return p
}

// contractArgs are supervisor.ContractArgs for a VM with an address.
var contractArgs = []string{"console=ttyS0", "panic=1", "net.ifnames=0", "quiet", "cryptomgr.notests",
	"pci=off", "mvm.hostname=web1", "mvm.ip=10.0.0.2", "mvm.gw=10.0.0.1"}

// config is a VM as the supervisor would describe it (see supervisor.drives).
func (h *harness) config() vmm.Config {
	return vmm.Config{
		Name: "web1", CPUs: 2, MemoryMiB: 256,
		Kernel: h.file("vmlinux"), Initrd: h.file("initrd.img"),
		KernelArgs: contractArgs,
		Drives: []vmm.Drive{
			{ID: "vda", Path: h.file("rootfs.ext4")},
			{ID: "vdb", Path: h.file("config.img"), ReadOnly: true},
			{ID: "vdc", Path: h.file("secrets.img"), ReadOnly: true},
		},
		MAC: "06:00:0a:00:00:02",
	}
}

// call is a request in the form tests compare: method, path and decoded body.
type call struct {
	Method, Path string
	Body         map[string]any
}

// configCalls are the requests that change state, GETs (the readiness poll,
// version) left out.
func configCalls(s *fakefc.Server) []call {
	var out []call
	for _, r := range s.Requests() {
		if r.Method != http.MethodGet {
			out = append(out, call{r.Method, r.Path, r.Body})
		}
	}
	return out
}

// body decodes a JSON object the way the fake records one.
func body(t *testing.T, js string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(js), &m); err != nil {
		t.Fatalf("bad test JSON %s: %v", js, err)
	}
	return m
}

func equalCalls(t *testing.T, got, want []call) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("got %d requests, want %d", len(got), len(want))
	}
	for i := 0; i < len(got) || i < len(want); i++ {
		var g, w call
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if !reflect.DeepEqual(g, w) {
			t.Errorf("request %d:\n got  %s %s %v\n want %s %s %v", i, g.Method, g.Path, g.Body, w.Method, w.Path, w.Body)
		}
	}
}
