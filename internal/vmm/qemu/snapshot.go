package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// maxMigrationBandwidth lifts QEMU's default migration limit (32 MiB/s), which would
// make saving a few hundred MiB of guest memory take seconds.
const maxMigrationBandwidth = 16 << 30

// pipeChunk is the pipe size and copy buffer for saved states: hundreds of MiB go
// through, and the default 64 KiB pipe means a context switch every 64 KiB.
const pipeChunk = 1 << 20

func setPipeSize(f *os.File) {
	_, _ = unix.FcntlInt(f.Fd(), unix.F_SETPIPE_SZ, pipeChunk)
}

// Pause implements vmm.Instance.
func (i *instance) Pause(ctx context.Context) error {
	_, err := i.qmp.Execute(ctx, "stop", nil)
	return err
}

// Resume implements vmm.Instance.
func (i *instance) Resume(ctx context.Context) error {
	_, err := i.qmp.Execute(ctx, "cont", nil)
	return err
}

// Version implements vmm.Instance.
func (i *instance) Version(ctx context.Context) (string, error) {
	raw, err := i.qmp.Execute(ctx, "query-version", nil)
	if err != nil {
		return "", err
	}
	var v struct {
		QEMU struct{ Major, Minor, Micro int } `json:"qemu"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", fmt.Errorf("qmp query-version: %w", err)
	}
	return fmt.Sprintf("%d.%d.%d", v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro), nil
}

// Announce implements vmm.Instance: QEMU sends a RARP from the NIC's MAC and has the
// guest send gratuitous ARPs for the address it has now.
func (i *instance) Announce(ctx context.Context) error {
	_, err := i.qmp.Execute(ctx, "announce-self", map[string]any{"initial": 50, "max": 550, "rounds": 3, "step": 100})
	return err
}

// SaveState implements vmm.Instance: a migration of the paused VM into a pipe whose
// write end QEMU gets by SCM_RIGHTS, so the state never touches a path QEMU opens.
func (i *instance) SaveState(ctx context.Context, w io.Writer) error {
	if st, err := i.qmp.Status(ctx); err != nil {
		return err
	} else if st != "paused" && st != "postmigrate" {
		return fmt.Errorf("save state: the VM is %s, not paused", st)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	_, err = i.qmp.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": "mvm-save"}, pw)
	pw.Close()
	if err != nil {
		return err
	}
	if _, err := i.qmp.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": maxMigrationBandwidth}); err != nil {
		return err
	}
	setPipeSize(pr)
	copied := make(chan error, 1)
	go func() {
		_, err := io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{pr}, make([]byte, pipeChunk))
		copied <- err
	}()
	if _, err := i.qmp.Execute(ctx, "migrate", map[string]any{"uri": "fd:mvm-save"}); err != nil {
		return err
	}
	if err := i.waitMigration(ctx); err != nil {
		return err
	}
	// QEMU closes its end when the migration completes; the copy then sees EOF.
	select {
	case err := <-copied:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitMigration polls an outgoing migration until it has completed.
func (i *instance) waitMigration(ctx context.Context) error {
	for {
		raw, err := i.qmp.Execute(ctx, "query-migrate", nil)
		if err != nil {
			return err
		}
		var m struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			return fmt.Errorf("qmp query-migrate: %w", err)
		}
		switch m.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("save state: migration %s: %s", m.Status, m.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// restore loads cfg.RestoreFrom into a QEMU started with -incoming defer -S. The
// announcements QEMU would make on its own are turned off first: they would announce
// the saved guest's identity, which the caller is about to replace.
func (i *instance) restore(ctx context.Context, from io.Reader) error {
	if _, err := i.qmp.Execute(ctx, "migrate-set-parameters", map[string]any{"announce-rounds": 0}); err != nil {
		return err
	}
	fed := make(chan error, 1)
	if f, ok := from.(*os.File); ok && isRegular(f) {
		// A file is read by QEMU itself: no copy through a pipe.
		if _, err := i.qmp.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": "mvm-restore"}, f); err != nil {
			return err
		}
		fed <- nil
	} else {
		pr, pw, err := os.Pipe()
		if err != nil {
			return err
		}
		_, err = i.qmp.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": "mvm-restore"}, pr)
		pr.Close()
		if err != nil {
			pw.Close()
			return err
		}
		setPipeSize(pw)
		go func() {
			_, err := io.CopyBuffer(struct{ io.Writer }{pw}, struct{ io.Reader }{from}, make([]byte, pipeChunk))
			pw.Close()
			fed <- err
		}()
	}
	if _, err := i.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:mvm-restore"}); err != nil {
		return err
	}
	var feedErr error
	select {
	case feedErr = <-fed:
	case <-i.exited:
		return errors.New("the hypervisor exited while loading the saved state")
	case <-ctx.Done():
		return ctx.Err()
	}
	if feedErr != nil {
		return fmt.Errorf("read saved state: %w", feedErr)
	}
	for {
		st, err := i.qmp.Status(ctx)
		if err != nil {
			return fmt.Errorf("load saved state: %w", err)
		}
		if st == "paused" {
			return nil
		}
		if st != "inmigrate" && st != "prelaunch" {
			return fmt.Errorf("load saved state: the VM is %s", st)
		}
		select {
		case <-i.exited:
			return errors.New("the hypervisor exited while loading the saved state")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// isRegular reports whether f is a regular file (which QEMU can read at its own pace
// from the start; a pipe or socket is fed by a copy instead).
func isRegular(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode().IsRegular()
}
