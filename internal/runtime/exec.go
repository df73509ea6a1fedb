package runtime

import (
	"context"
	"fmt"
	"os"

	"github.com/mvm-dev/mvm/internal/agent/client"
	"github.com/mvm-dev/mvm/internal/agent/proto"
)

// Agent returns an authenticated agent client for a running VM.
func (r *Runtime) Agent(name string) (*client.Client, error) {
	rec, err := r.Get(name)
	if err != nil {
		return nil, err
	}
	if err := requireRunning(rec); err != nil {
		return nil, err
	}
	dir := r.Root.VM(rec.ID)
	token, err := os.ReadFile(dir.Token())
	if err != nil {
		return nil, fmt.Errorf("read the agent token of %s: %w (are you root?)", name, err)
	}
	return client.NewHybrid(dir.AgentSocket(), token), nil
}

// Exec runs a command in a VM.
func (r *Runtime) Exec(ctx context.Context, name string, o client.ExecOptions) (proto.Exit, error) {
	cl, err := r.Agent(name)
	if err != nil {
		return proto.Exit{}, err
	}
	return cl.Exec(ctx, o)
}
