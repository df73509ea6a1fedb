package qemudouble

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// tunDevice is the TUN/TAP device node as Firecracker opens it: the host's,
// or under the jailer the node the jailer made in the chroot.
const tunDevice = "/dev/net/tun"

// openTAP attaches to the TAP device called name the way Firecracker does:
// tun (tunDevice, resolved) with TUNSETIFF, IFF_TAP|IFF_NO_PI|IFF_VNET_HDR
// and the name. For a persistent TAP that exists this attaches to it (a TAP
// that is not multi-queue takes one descriptor only: the caller must have
// closed its own); for a name that does not exist the kernel makes a new
// TAP, as it would for Firecracker.
func openTAP(tun, name string) (*os.File, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return nil, fmt.Errorf("TAP %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	fd, err := unix.Open(tun, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", tun, err)
	}
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("attach to TAP %s (TUNSETIFF): %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}
