package runtime

import (
	"context"
	"net"

	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/forward"
	"github.com/mvm-dev/mvm/internal/vm"
)

// Forward publishes guest ports on the host until ctx ends. ready is called once
// every port is bound.
func (r *Runtime) Forward(ctx context.Context, name string, specs []vm.PortSpec, ready func([]forward.Listener)) error {
	cl, err := r.Agent(name)
	if err != nil {
		return err
	}
	ls, err := forward.Listen(specs)
	if err != nil {
		return err
	}
	if ready != nil {
		ready(ls)
	}
	forward.Serve(ctx, ls, func(ctx context.Context, port int) (net.Conn, error) {
		return cl.Connect(ctx, "", port)
	}, r.Log)
	return nil
}

// Inspect returns a VM's record and, when it runs, what its agent reports.
func (r *Runtime) Inspect(ctx context.Context, name string) (vm.Record, *proto.AgentInfo, error) {
	rec, err := r.Get(name)
	if err != nil {
		return rec, nil, err
	}
	if rec.State != vm.StateRunning {
		return rec, nil, nil
	}
	cl, err := r.Agent(name)
	if err != nil {
		return rec, nil, err
	}
	info, err := cl.Info(ctx)
	if err != nil {
		return rec, nil, err
	}
	return rec, &info, nil
}
