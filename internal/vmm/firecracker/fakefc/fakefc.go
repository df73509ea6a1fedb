// Package fakefc is a test tool: an in-process fake of the Firecracker 1.13
// API server, listening on a Unix socket, that enforces the documented request
// rules so code driving Firecracker can be tested where Firecracker cannot run.
// By itself it boots nothing and runs no guest; a Machine (WithMachine) can
// run one behind it. It never stands in for Firecracker outside tests.
//
// The rules come from Firecracker's API description
// (src/firecracker/swagger/firecracker.yaml) and its request handling:
// bodies are checked field by field with unknown fields refused (Firecracker
// deserializes with deny_unknown_fields), pre-boot resources are refused
// after InstanceStart, post-boot operations before it, snapshot create needs
// a paused VM and snapshot load a fresh process. Errors are 400 with
// {"fault_message": ...}; successful PUT/PATCH are 204 with no body.
//
// Where the fake's wording differs from Firecracker's it keeps the meaning;
// tests should match on fragments, not whole messages.
//
// New ties a fake to a test. NewServer makes one without a test, for the
// QEMU test double (internal/vmm/firecracker/qemudouble), which serves this
// contract from a program and runs the guest through a Machine.
package fakefc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Instance states, as GET / reports them.
const (
	StateNotStarted = "Not started"
	StateRunning    = "Running"
	StatePaused     = "Paused"
)

// maxBody bounds a request body; Firecracker's own default limit is 51200
// bytes and no request here comes near it.
const maxBody = 51200

// Recorded is one request as the fake received it.
type Recorded struct {
	Method string
	Path   string
	// Body is the decoded JSON object, nil when the body was empty or not an
	// object. Numbers are float64, as encoding/json decodes them.
	Body map[string]any
	// Raw is the body as sent.
	Raw []byte
	// Status is the status the fake answered with.
	Status int
	// Fault is the fault_message of an error answer.
	Fault string
}

// Config is a copy of what has been configured, as JSON-decoded maps.
type Config struct {
	BootSource        map[string]any
	MachineConfig     map[string]any // nil until PUT /machine-config or a snapshot load
	Drives            map[string]map[string]any
	NetworkInterfaces map[string]map[string]any
	Vsock             map[string]any
	Logger            map[string]any
	Metrics           map[string]any
	Entropy           map[string]any
	Balloon           map[string]any
}

// Option changes how New sets up a Server.
type Option func(*options)

type options struct {
	id, version, socketPath string
	root, workDir           string
	fileChecks              bool
	machine                 Machine
	requestLog              func(Recorded)
}

// WithInstanceID sets the id GET / reports (Firecracker's --id).
func WithInstanceID(id string) Option { return func(o *options) { o.id = id } }

// WithVersion sets the version GET / and GET /version report, and the version
// written into snapshots (a load refuses another major.minor).
func WithVersion(v string) Option { return func(o *options) { o.version = v } }

// WithSocketPath listens at path instead of a fresh temporary directory.
func WithSocketPath(path string) Option { return func(o *options) { o.socketPath = path } }

// WithoutFileChecks stops the fake from checking that kernel, initrd, drive
// and snapshot paths exist, and that the log and metrics files can be opened.
// Firecracker opens them, so the checks are on by default.
func WithoutFileChecks() Option { return func(o *options) { o.fileChecks = false } }

// WithRoot makes the fake resolve every file path it is given (kernel,
// initrd, drives, vsock socket, snapshot files, log and metrics files) inside
// root, as a Firecracker jailed by the jailer sees only its chroot (see
// Resolve). Without it paths are the host's. The API socket (WithSocketPath)
// is a host path either way.
func WithRoot(root string) Option { return func(o *options) { o.root = root } }

// WithRequestLog calls f with every request once it has been answered, for a
// program that logs its API traffic. f runs on the request's goroutine.
func WithRequestLog(f func(Recorded)) Option { return func(o *options) { o.requestLog = f } }

// Server is a fake Firecracker API server. Its methods are safe for
// concurrent use.
type Server struct {
	tb      testing.TB // nil when made by NewServer
	opts    options
	schemas map[string]schema
	dir     string
	sock    string
	ln      net.Listener
	srv     *http.Server
	done    chan struct{}
	once    sync.Once
	ended   chan struct{} // closed after the answer to a failed load

	mu       sync.Mutex
	state    string
	started  bool
	bootPath bool // a boot-specific resource is configured: snapshot load is refused
	exited   bool // a failed snapshot load ends a Firecracker process
	cfg      config
	requests []Recorded
	faults   []fault
}

type config struct {
	bootSource, machine, vsock, logger, metrics, entropy, balloon map[string]any
	drives, ifaces                                                map[string]map[string]any
	driveOrder                                                    []string // ids, as first configured
}

type fault struct {
	method, path, message string
	status                int
}

// New starts a fake on a Unix socket and stops it when the test ends.
func New(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	s, err := NewServer(opts...)
	if err != nil {
		tb.Fatalf("fakefc: %v", err)
	}
	s.tb = tb
	tb.Cleanup(s.Close)
	return s
}

// NewServer starts a fake on a Unix socket. The caller stops it with Close.
func NewServer(opts ...Option) (*Server, error) {
	o := options{id: "anonymous-instance", version: "1.13.0", fileChecks: true}
	for _, opt := range opts {
		opt(&o)
	}
	s := &Server{
		opts: o, schemas: schemas(), state: StateNotStarted, done: make(chan struct{}), ended: make(chan struct{}),
		cfg: config{drives: map[string]map[string]any{}, ifaces: map[string]map[string]any{}},
	}
	s.sock = o.socketPath
	if s.sock == "" {
		// Not tb.TempDir: its paths can pass the 108-byte limit of a socket path.
		dir, err := os.MkdirTemp("", "fakefc-")
		if err != nil {
			return nil, err
		}
		s.dir, s.sock = dir, filepath.Join(dir, "api.sock")
	}
	ln, err := net.Listen("unix", s.sock)
	if err != nil {
		if s.dir != "" {
			_ = os.RemoveAll(s.dir)
		}
		return nil, fmt.Errorf("listen: %w", err)
	}
	s.ln = ln
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln) // returns once Close runs
	}()
	return s, nil
}

// SocketPath is the path of the API socket.
func (s *Server) SocketPath() string { return s.sock }

// Close stops the server and removes its socket. Calling it again does nothing.
func (s *Server) Close() {
	s.once.Do(func() {
		_ = s.srv.Close()
		<-s.done
		if s.dir != "" {
			_ = os.RemoveAll(s.dir)
		}
	})
}

// Requests returns every request received so far, in order.
func (s *Server) Requests() []Recorded {
	s.mu.Lock()
	defer s.mu.Unlock()
	return cloneRecords(s.requests)
}

// State is the instance state GET / would report.
func (s *Server) State() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// Exited reports whether the fake has ended the way Firecracker does after a
// failed snapshot load: it no longer accepts connections.
func (s *Server) Exited() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exited
}

// Ended is closed once the fake has ended the way Firecracker does after a
// failed snapshot load (see Exited), after its answer to that request has
// been sent: a program serving the fake exits then.
func (s *Server) Ended() <-chan struct{} { return s.ended }

// Config returns a copy of the configured resources.
func (s *Server) Config() Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	var c Config
	raw, err := json.Marshal(s.cfg.export())
	if err == nil {
		err = json.Unmarshal(raw, &c)
	}
	if err != nil && s.tb != nil {
		// Only JSON-decoded values are stored, so this cannot happen.
		s.tb.Errorf("fakefc: copy config: %v", err)
	}
	return c
}

// InjectFault makes the next request for method and path fail with status and
// a fault_message, without touching state. Faults queue up: each is used once.
func (s *Server) InjectFault(method, path string, status int, message string) {
	if status < 400 || status > 599 {
		if s.tb == nil {
			panic(fmt.Sprintf("fakefc: InjectFault status %d is not an error status", status))
		}
		s.tb.Helper()
		s.tb.Fatalf("fakefc: InjectFault status %d is not an error status", status)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, fault{method: method, path: path, status: status, message: message})
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	raw, readErr := io.ReadAll(io.LimitReader(r.Body, maxBody+1))

	s.mu.Lock()
	if s.exited {
		s.mu.Unlock()
		dropConnection(w)
		return
	}
	rec := Recorded{Method: r.Method, Path: r.URL.Path, Raw: raw}
	if len(bytes.TrimSpace(raw)) > 0 {
		var m map[string]any
		if json.Unmarshal(raw, &m) == nil {
			rec.Body = m
		}
	}
	var rep reply
	switch {
	case readErr != nil:
		rep = faultf(http.StatusBadRequest, "Cannot read the request body: %v", readErr)
	case len(raw) > maxBody:
		rep = faultf(http.StatusBadRequest, "Request payload with size %d is larger than the limit of %d allowed by server.", len(raw), maxBody)
	default:
		rep = s.handle(r.Context(), r.Method, r.URL.Path, raw)
	}
	rec.Status = rep.status
	if f, ok := rep.body.(map[string]string); ok {
		rec.Fault = f["fault_message"]
	}
	s.requests = append(s.requests, rec)
	if rep.fatal {
		s.exited = true
	}
	s.mu.Unlock()

	if rep.fatal {
		w.Header().Set("Connection", "close")
		_ = s.ln.Close() // no new connections, as when the process is gone
	}
	var body []byte
	if rep.body != nil {
		body, _ = json.Marshal(rep.body)
		body = append(body, '\n')
		w.Header().Set("Content-Type", "application/json")
		// A known length makes the flush below send the whole answer: with
		// chunked encoding its last chunk would wait for the handler's
		// return, and a program serving the fake may exit before that.
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	}
	w.WriteHeader(rep.status)
	_, _ = w.Write(body)
	if rep.fatal {
		// The answer goes out before anyone acts on the end: a program
		// serving the fake exits as soon as Ended is closed.
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
	}
	if f := s.opts.requestLog; f != nil {
		f(cloneRecords([]Recorded{rec})[0])
	}
	if rep.fatal {
		close(s.ended)
	}
}

// dropConnection closes a kept-alive connection without an answer, as a
// process that has exited would.
func dropConnection(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	if conn, _, err := hj.Hijack(); err == nil {
		_ = conn.Close()
	}
}

func (c config) export() map[string]any {
	return map[string]any{
		"BootSource": c.bootSource, "MachineConfig": c.machine, "Drives": c.drives,
		"NetworkInterfaces": c.ifaces, "Vsock": c.vsock, "Logger": c.logger,
		"Metrics": c.metrics, "Entropy": c.entropy, "Balloon": c.balloon,
	}
}

func cloneRecords(in []Recorded) []Recorded {
	out := make([]Recorded, len(in))
	for i, r := range in {
		r.Raw = bytes.Clone(r.Raw)
		if r.Body != nil {
			var m map[string]any
			if json.Unmarshal(r.Raw, &m) == nil {
				r.Body = m // fresh copy, so callers cannot change the record
			}
		}
		out[i] = r
	}
	return out
}

func trimID(path, prefix string) (string, bool) {
	if !strings.HasPrefix(path, prefix) {
		return "", false
	}
	id := strings.TrimPrefix(path, prefix)
	return id, !strings.Contains(id, "/")
}
