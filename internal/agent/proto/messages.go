package proto

import (
	"errors"
	"fmt"
	"strings"
)

// Auth opens every connection, sent by the host together with its Request. MAC
// proves the host holds the token, bound to a fresh nonce, the host's clock and the
// request that follows (see HostMAC). Challenge is set when answering a Challenge.
type Auth struct {
	Proto     int    `json:"proto"`
	Nonce     []byte `json:"nonce"`
	TimeNs    int64  `json:"time_ns"`
	Challenge []byte `json:"challenge,omitempty"`
	MAC       []byte `json:"mac"`
}

// Challenge asks the host to prove itself against the agent's nonce instead of its
// clock: sent when the clocks disagree (a guest clock set by hand, a long pause) or
// the host's nonce was seen before.
type Challenge struct {
	Nonce  []byte `json:"nonce"`
	TimeNs int64  `json:"time_ns"` // the guest's clock, for the host's error message
}

// AuthOK accepts the host and proves the agent holds the token too.
type AuthOK struct {
	Proto        int      `json:"proto"`
	AgentVersion string   `json:"agent_version"`
	Capabilities []string `json:"capabilities"`
	MAC          []byte   `json:"mac"`
}

// Operations a Request can ask for.
const (
	OpPing     = "ping"
	OpExec     = "exec"
	OpSetTime  = "settime"
	OpPoweroff = "poweroff"
	OpInfo     = "info"
	OpConnect  = "connect"  // the stream becomes a TCP connection to a guest port
	OpCopyIn   = "copy_in"  // the host sends a tar stream to unpack in the guest
	OpCopyOut  = "copy_out" // the agent sends a tar stream of a guest path
	OpIdentify = "identify" // after a restore: take on the identity on the (new) drives
)

// Request asks the agent to do one thing. One request per connection.
type Request struct {
	Op      string       `json:"op"`
	Exec    *ExecRequest `json:"exec,omitempty"`
	SetTime *SetTime     `json:"settime,omitempty"`
	Connect *Connect     `json:"connect,omitempty"`
	Copy    *Copy        `json:"copy,omitempty"`
	// Identify is sent once after a restore from a snapshot.
	Identify *Identify `json:"identify,omitempty"`
}

// Connect asks for a TCP connection from the guest to Host:Port (Host defaults to
// 127.0.0.1, the guest's own loopback). After an OK Response the stream carries the
// connection's bytes unframed, half-closes included.
type Connect struct {
	Host string `json:"host,omitempty"`
	Port int    `json:"port"`
}

// Validate checks a connect request.
func (c *Connect) Validate() error {
	if c.Port < 1 || c.Port > 65535 {
		return fmt.Errorf("connect: port %d out of range", c.Port)
	}
	if len(c.Host) > 255 || strings.ContainsAny(c.Host, " /\x00") {
		return errors.New("connect: bad host")
	}
	return nil
}

// Copy describes a `cp` in either direction. For copy_out Path is the guest source;
// for copy_in it is the guest destination and Source describes what the host sends.
type Copy struct {
	Path   string      `json:"path"`
	Source *CopySource `json:"source,omitempty"`
	// Bulk: the host is attached to the bulk channel. For copy_out the agent may send
	// the stream there instead of in data frames, and says so with Response.BulkID; for
	// copy_in the host offers to send it there under BulkID, and the agent accepts by
	// answering with the same BulkID.
	Bulk   bool   `json:"bulk,omitempty"`
	BulkID string `json:"bulk_id,omitempty"`
}

// CopySource describes the sent side of a copy, as docker cp resolves it.
type CopySource struct {
	Base         string `json:"base"`
	IsDir        bool   `json:"is_dir"`
	ContentsOnly bool   `json:"contents_only,omitempty"`
}

// Validate checks a copy request.
func (c *Copy) Validate(op string) error {
	if c.Path == "" || len(c.Path) > 4096 || strings.IndexByte(c.Path, 0) >= 0 {
		return errors.New("copy: bad path")
	}
	if op == OpCopyIn {
		if c.Source == nil || c.Source.Base == "" || strings.ContainsAny(c.Source.Base, "/\x00") || c.Source.Base == ".." {
			return errors.New("copy: bad source description")
		}
	}
	return nil
}

// Done ends a copied stream: the sender's byte count and digest of the tar stream.
type Done struct {
	Bytes  int64       `json:"bytes"`
	Digest []byte      `json:"digest"`          // XXH64 of the stream (see internal/archive)
	Error  string      `json:"error,omitempty"` // the sender failed part way
	Result *CopyResult `json:"result,omitempty"`
	// Changed names files that were written to while they were sent on the bulk
	// channel (where the digest is not computed from the bytes sent): a digest that
	// then disagrees means "copy again", not a broken channel.
	Changed []string `json:"changed,omitempty"`
}

// CopyResult answers a copy_in once everything is written.
type CopyResult struct {
	Bytes   int64    `json:"bytes"`
	Entries int      `json:"entries"`
	Skipped []string `json:"skipped,omitempty"`
}

// StdinWindow is how many bytes of stdin the host may send beyond what the agent has
// acknowledged with Window frames. The agent takes every frame at once (so signals,
// resizes and the host's end are seen even while the command reads nothing) and
// writes stdin to the command from a buffer this size; the host waits for room.
const StdinWindow = 256 << 10

// Window gives the host back room for Bytes more bytes of stdin: they were written
// to the command (or dropped, after it closed its input).
type Window struct {
	Bytes int64 `json:"bytes"`
}

// Validate checks a window update from the agent.
func (w *Window) Validate() error {
	if w.Bytes <= 0 || w.Bytes > StdinWindow {
		return fmt.Errorf("window update of %d bytes", w.Bytes)
	}
	return nil
}

// Resize changes an exec TTY's window size.
type Resize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// ExecRequest starts a process in the guest.
type ExecRequest struct {
	Argv      []string `json:"argv"`
	Env       []string `json:"env,omitempty"` // KEY=VALUE, added to the agent's default environment
	Cwd       string   `json:"cwd,omitempty"`
	User      string   `json:"user,omitempty"` // name, uid, name:group or uid:gid
	TimeoutMs int64    `json:"timeout_ms,omitempty"`
	Stdin     bool     `json:"stdin,omitempty"` // the host will send TStdin frames and a TStdinEOF
	TTY       bool     `json:"tty,omitempty"`   // run on a pseudo-terminal: one output stream, raw input
	Rows      uint16   `json:"rows,omitempty"`
	Cols      uint16   `json:"cols,omitempty"`
}

// Limits on an exec request, checked by the agent.
const (
	MaxArgs   = 4096
	MaxEnv    = 4096
	MaxArgLen = 32 << 10
)

// Validate checks an exec request from an untrusted peer.
func (e *ExecRequest) Validate() error {
	if len(e.Argv) == 0 || e.Argv[0] == "" {
		return errors.New("exec: empty command")
	}
	if len(e.Argv) > MaxArgs || len(e.Env) > MaxEnv {
		return errors.New("exec: too many arguments or environment entries")
	}
	for _, s := range append(append([]string(nil), e.Argv...), e.Env...) {
		if len(s) > MaxArgLen {
			return errors.New("exec: argument too long")
		}
		for i := 0; i < len(s); i++ {
			if s[i] == 0 {
				return errors.New("exec: argument contains a NUL byte")
			}
		}
	}
	for _, kv := range e.Env {
		if i := indexByte(kv, '='); i <= 0 {
			return fmt.Errorf("exec: environment entry %q is not KEY=VALUE", kv)
		}
	}
	if e.TimeoutMs < 0 {
		return errors.New("exec: negative timeout")
	}
	if len(e.User) > 256 || strings.IndexByte(e.User, 0) >= 0 || strings.Count(e.User, ":") > 1 {
		return errors.New("exec: bad user")
	}
	return nil
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// Identify makes a guest restored from a snapshot its own machine: the clock from the
// host, the kernel's random state reseeded with the host's entropy, and the hostname,
// network, config and secrets read again from the drives the new VM was given. The
// agent answers with the new token in use for every later connection.
type Identify struct {
	UnixNano int64  `json:"unix_nano"`
	Entropy  []byte `json:"entropy"`
}

// Entropy bounds for Identify, in bytes.
const (
	MinIdentifyEntropy = 32
	MaxIdentifyEntropy = 512
)

// Validate checks an identify request.
func (i *Identify) Validate() error {
	if i.UnixNano <= 0 {
		return errors.New("identify: missing time")
	}
	if len(i.Entropy) < MinIdentifyEntropy || len(i.Entropy) > MaxIdentifyEntropy {
		return fmt.Errorf("identify: entropy must be %d to %d bytes", MinIdentifyEntropy, MaxIdentifyEntropy)
	}
	return nil
}

// Identified reports what an identify did, step by step, in milliseconds, and proves
// that the agent now holds the new token (IdentifiedMAC), which saves the host a
// round trip to check it.
type Identified struct {
	StepsMs  map[string]float64 `json:"steps_ms"`
	TokenMAC []byte             `json:"token_mac"`
}

// SetTime sets the guest wall clock.
type SetTime struct {
	UnixNano int64 `json:"unix_nano"`
}

// Response answers a Request. For exec it says the process started (or why not);
// output and the exit status follow in later frames.
type Response struct {
	OK     bool        `json:"ok"`
	Error  string      `json:"error,omitempty"`
	Code   int         `json:"code,omitempty"` // exec: exit code to report when the start failed (126, 127)
	PID    int         `json:"pid,omitempty"`
	Info   *AgentInfo  `json:"info,omitempty"`
	Source *CopySource `json:"source,omitempty"`  // copy_out: what the agent is about to send
	BulkID string      `json:"bulk_id,omitempty"` // copy_out: the stream comes on the bulk channel after this id
	Result *CopyResult `json:"result,omitempty"`  // copy_in: what was written
	// Identified is the answer to identify.
	Identified *Identified `json:"identified,omitempty"`
}

// AgentInfo describes the running agent and guest. Ping fills the first fields;
// info fills them all.
type AgentInfo struct {
	AgentVersion string  `json:"agent_version"`
	Hostname     string  `json:"hostname"`
	Kernel       string  `json:"kernel"`
	UptimeSec    float64 `json:"uptime_sec"`
	BootMillis   int64   `json:"boot_ms"` // guest uptime when the agent started serving

	Addresses    []string  `json:"addresses,omitempty"` // CIDRs on the guest's interfaces, lo excluded
	Mounts       []Mount   `json:"mounts,omitempty"`
	Load         []float64 `json:"load,omitempty"` // 1, 5 and 15 minute load averages
	MemTotalKiB  int64     `json:"mem_total_kib,omitempty"`
	MemAvailKiB  int64     `json:"mem_available_kib,omitempty"`
	Processes    int       `json:"processes,omitempty"`
	Capabilities []string  `json:"capabilities,omitempty"`
}

// Mount is one line of the guest's /proc/mounts.
type Mount struct {
	Source  string `json:"source"`
	Target  string `json:"target"`
	FSType  string `json:"fstype"`
	Options string `json:"options"`
}

// Exit reports how an exec'd process ended.
type Exit struct {
	Code     int    `json:"code"`             // the value mvmctl exits with: status, or 128+signal
	Signal   int    `json:"signal,omitempty"` // non-zero when killed by a signal
	TimedOut bool   `json:"timed_out,omitempty"`
	Error    string `json:"error,omitempty"`
}

// Signal asks the agent to signal the running process group.
type Signal struct {
	Signal int `json:"signal"`
}

// Error ends a connection with a reason.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes.
const (
	ErrCodeAuth     = "auth_failed"
	ErrCodeProtocol = "protocol"
	ErrCodeBadReq   = "bad_request"
)

// RemoteError is an Error frame received from the peer.
type RemoteError struct {
	Code    string
	Message string
}

func (e *RemoteError) Error() string { return fmt.Sprintf("agent: %s (%s)", e.Message, e.Code) }
