package firecracker

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// tapName asks the kernel which interface a TAP descriptor is attached to, so
// Firecracker (which opens TAPs by name) can be pointed at it.
func tapName(f *os.File) (string, error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return "", fmt.Errorf("firecracker: TAP name: %w", err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return "", fmt.Errorf("firecracker: TAP name of %s: %w", f.Name(), err)
	}
	var ioctlErr error
	if err := rc.Control(func(fd uintptr) { ioctlErr = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr) }); err != nil {
		return "", fmt.Errorf("firecracker: TAP name of %s: %w", f.Name(), err)
	}
	if ioctlErr != nil {
		return "", fmt.Errorf("firecracker: %s is not a TAP device (TUNGETIFF: %w); pass its name in VMOptions.TAPName", f.Name(), ioctlErr)
	}
	return ifr.Name(), nil
}
