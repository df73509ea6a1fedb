package fcapi

import (
	"context"
	"encoding/json"
	"net/http"
)

// checkable is a request body that knows its own rules.
type checkable interface{ check(*checker) }

// send validates body, then sends it; nothing goes out for an invalid body.
func (c *Client) send(ctx context.Context, method, path string, body checkable) error {
	ck := checker{method: method, path: path}
	body.check(&ck)
	if err := ck.result(); err != nil {
		return err
	}
	return c.do(ctx, method, path, body, nil)
}

func (c *Client) get(ctx context.Context, path string, decode func([]byte) error) error {
	return c.do(ctx, http.MethodGet, path, nil, decode)
}

// DescribeInstance is GET /.
func (c *Client) DescribeInstance(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.get(ctx, "/", func(b []byte) (err error) {
		info, err = decodeInstanceInfo(b)
		return err
	})
	return info, err
}

// Version is GET /version: the firecracker_version string.
func (c *Client) Version(ctx context.Context) (string, error) {
	var v firecrackerVersion
	err := c.get(ctx, "/version", func(b []byte) error { return json.Unmarshal(b, &v) })
	return v.FirecrackerVersion, err
}

// GetMachineConfig is GET /machine-config. Before any PUT it reports
// Firecracker's defaults (1 vCPU, 128 MiB).
func (c *Client) GetMachineConfig(ctx context.Context) (MachineConfig, error) {
	var mc MachineConfig
	err := c.get(ctx, "/machine-config", func(b []byte) error { return json.Unmarshal(b, &mc) })
	return mc, err
}

// PutBootSource is PUT /boot-source. Pre-boot only.
func (c *Client) PutBootSource(ctx context.Context, b BootSource) error {
	return c.send(ctx, http.MethodPut, "/boot-source", b)
}

// PutMachineConfig is PUT /machine-config. Pre-boot only.
func (c *Client) PutMachineConfig(ctx context.Context, m MachineConfig) error {
	return c.send(ctx, http.MethodPut, "/machine-config", m)
}

// PutDrive is PUT /drives/{drive_id}, the id taken from d. Pre-boot only.
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	return c.send(ctx, http.MethodPut, "/drives/"+d.DriveID, d)
}

// PutNetworkInterface is PUT /network-interfaces/{iface_id}, the id taken
// from n. Pre-boot only.
func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	return c.send(ctx, http.MethodPut, "/network-interfaces/"+n.IfaceID, n)
}

// PutVsock is PUT /vsock. Pre-boot only.
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.send(ctx, http.MethodPut, "/vsock", v)
}

// PutLogger is PUT /logger. Pre-boot only; does not block a snapshot load.
func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	return c.send(ctx, http.MethodPut, "/logger", l)
}

// PutMetrics is PUT /metrics. Pre-boot only, and only once per process.
func (c *Client) PutMetrics(ctx context.Context, m Metrics) error {
	return c.send(ctx, http.MethodPut, "/metrics", m)
}

// PutEntropy is PUT /entropy. Pre-boot only.
func (c *Client) PutEntropy(ctx context.Context, e Entropy) error {
	return c.send(ctx, http.MethodPut, "/entropy", e)
}

// PutBalloon is PUT /balloon. Pre-boot only.
func (c *Client) PutBalloon(ctx context.Context, b Balloon) error {
	return c.send(ctx, http.MethodPut, "/balloon", b)
}

func (a instanceAction) check(c *checker) {
	c.oneOf("action_type", string(a.ActionType), string(ActionInstanceStart), string(ActionSendCtrlAltDel), string(ActionFlushMetrics))
	c.required("action_type", string(a.ActionType))
}

// Action is PUT /actions.
func (c *Client) Action(ctx context.Context, t ActionType) error {
	return c.send(ctx, http.MethodPut, "/actions", instanceAction{ActionType: t})
}

// InstanceStart boots the configured microVM.
func (c *Client) InstanceStart(ctx context.Context) error { return c.Action(ctx, ActionInstanceStart) }

// SendCtrlAltDel asks an x86 guest to shut down (it needs an i8042 driver).
func (c *Client) SendCtrlAltDel(ctx context.Context) error {
	return c.Action(ctx, ActionSendCtrlAltDel)
}

// FlushMetrics writes the metrics now.
func (c *Client) FlushMetrics(ctx context.Context) error { return c.Action(ctx, ActionFlushMetrics) }

func (v vm) check(c *checker) {
	c.oneOf("state", string(v.State), string(VMPaused), string(VMResumed))
	c.required("state", string(v.State))
}

// PatchVM is PATCH /vm. Post-boot only.
func (c *Client) PatchVM(ctx context.Context, s VMState) error {
	return c.send(ctx, http.MethodPatch, "/vm", vm{State: s})
}

// Pause pauses the vCPUs.
func (c *Client) Pause(ctx context.Context) error { return c.PatchVM(ctx, VMPaused) }

// Resume resumes the vCPUs.
func (c *Client) Resume(ctx context.Context) error { return c.PatchVM(ctx, VMResumed) }

// CreateSnapshot is PUT /snapshot/create. The VM must be paused.
func (c *Client) CreateSnapshot(ctx context.Context, s SnapshotCreate) error {
	return c.send(ctx, http.MethodPut, "/snapshot/create", s)
}

// LoadSnapshot is PUT /snapshot/load. Only a fresh process takes it (logger
// and metrics may be set first); a failed load ends the process.
func (c *Client) LoadSnapshot(ctx context.Context, s SnapshotLoad) error {
	return c.send(ctx, http.MethodPut, "/snapshot/load", s)
}
