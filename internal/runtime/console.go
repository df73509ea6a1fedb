package runtime

import (
	"context"
	"fmt"
	"net"
	"os"
)

// AttachConsole connects to a running VM's serial console.
func (r *Runtime) AttachConsole(ctx context.Context, name string) (net.Conn, error) {
	rec, err := r.Get(name)
	if err != nil {
		return nil, err
	}
	if !rec.State.HasProcess() {
		return nil, fmt.Errorf("%w: %s is %s; its console log is in `mvmctl logs %s`", ErrNotRunning, name, rec.State, name)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", r.Root.VM(rec.ID).ConsoleSocket())
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("%s has no console yet (state %s): try again", name, rec.State)
		}
		return nil, fmt.Errorf("attach to the console of %s: %w", name, err)
	}
	return c, nil
}
