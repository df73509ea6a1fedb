// Package supervisor is the per-VM process that owns a hypervisor: it prepares the
// VM's drives and TAP, starts the hypervisor, keeps the console log, serves the agent
// and console sockets, and cleans everything up when the VM ends, however it ends.
// `mvmctl up` starts one per VM and returns; the supervisor outlives the CLI.
package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// Phases reported to the CLI that started the supervisor.
const (
	PhaseStarted = "started" // hypervisor running, console socket open
	PhaseReady   = "ready"   // guest agent answered
	PhaseFailed  = "failed"
)

// Status is one line on the status pipe.
type Status struct {
	Phase   string `json:"phase"`
	Error   string `json:"error,omitempty"`
	IP      string `json:"ip,omitempty"`
	Accel   string `json:"accel,omitempty"`
	Notice  string `json:"notice,omitempty"` // e.g. why KVM is not used
	GuestMs int64  `json:"guest_boot_ms,omitempty"`
}

// ControlRequest is a request on the control socket.
type ControlRequest struct {
	// Op is "stop", "pause", "resume", "snapshot", or "relink" (drop the agent link;
	// for tests).
	Op        string           `json:"op"`
	TimeoutMs int64            `json:"timeout_ms,omitempty"`
	Immediate bool             `json:"immediate,omitempty"` // stop: no poweroff, stop the hypervisor now
	Snapshot  *SnapshotRequest `json:"snapshot,omitempty"`
}

// ControlResponse answers it.
type ControlResponse struct {
	OK       bool            `json:"ok"`
	Error    string          `json:"error,omitempty"`
	Snapshot *SnapshotResult `json:"snapshot,omitempty"`
}

// Request sends one control request and waits for the answer.
func Request(ctx context.Context, ctlSocket string, req ControlRequest) error {
	_, err := Call(ctx, ctlSocket, req)
	return err
}

// Call sends one control request and returns the answer.
func Call(ctx context.Context, ctlSocket string, req ControlRequest) (ControlResponse, error) {
	var resp ControlResponse
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", ctlSocket)
	if err != nil {
		return resp, fmt.Errorf("reach the VM's supervisor: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	raw, _ := json.Marshal(req)
	if _, err := c.Write(append(raw, '\n')); err != nil {
		return resp, err
	}
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		return resp, fmt.Errorf("supervisor did not answer: %w", err)
	}
	if err := json.Unmarshal(line, &resp); err != nil {
		return resp, err
	}
	if !resp.OK {
		return resp, errors.New(resp.Error)
	}
	return resp, nil
}

// RequestStop asks a VM's supervisor to stop the VM: poweroff through the agent, then
// a hard stop after timeout. It returns once the supervisor has accepted the request.
// A timeout of 0 stops at once, without asking the guest.
func RequestStop(ctx context.Context, ctlSocket string, timeout time.Duration) error {
	return Request(ctx, ctlSocket, ControlRequest{Op: "stop", TimeoutMs: timeout.Milliseconds(), Immediate: timeout <= 0})
}
