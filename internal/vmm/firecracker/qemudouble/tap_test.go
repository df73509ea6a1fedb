package qemudouble

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOpenTAPByName attaches to a persistent TAP by name, as Firecracker
// does, in a network namespace of its own so the host's is not touched.
func TestOpenTAPByName(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("making a TAP needs root")
	}
	type result struct {
		skip string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		// Never unlocked: the thread, moved to a new network namespace,
		// ends with this goroutine instead of going back to the pool.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- result{skip: fmt.Sprintf("cannot make a network namespace: %v", err)}
			return
		}
		done <- result{err: checkTAP("fctap0")}
	}()
	r := <-done
	if r.skip != "" {
		t.Skip(r.skip)
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
}

// checkTAP makes a persistent TAP called name (as `ip tuntap add` does),
// then checks what openTAP attaches.
func checkTAP(name string) error {
	if err := makePersistentTAP(name); err != nil {
		return err
	}
	f, err := openTAP(tunDevice, name)
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(int(f.Fd()), unix.TUNGETIFF, ifr); err != nil {
		return fmt.Errorf("TUNGETIFF: %w", err)
	}
	want := uint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if ifr.Name() != name || ifr.Uint16()&want != want {
		return fmt.Errorf("attached to %q with flags %#x, want %q with %#x", ifr.Name(), ifr.Uint16(), name, want)
	}
	// A single-queue TAP takes one descriptor: whoever made it must have
	// let go of theirs, as with Firecracker.
	if g, err := openTAP(tunDevice, name); err == nil {
		g.Close()
		return errors.New("a second descriptor attached to a single-queue TAP")
	} else if !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("second attach: %v, want EBUSY", err)
	}
	f.Close()
	g, err := openTAP(tunDevice, name)
	if err != nil {
		return fmt.Errorf("attach again after the first let go: %w", err)
	}
	return g.Close()
}

func makePersistentTAP(name string) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/net/tun: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("make TAP: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("TUNSETPERSIST: %w", err)
	}
	return nil
}
