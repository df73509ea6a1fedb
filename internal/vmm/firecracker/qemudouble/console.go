package qemudouble

import (
	"io"
	"net"
)

// pumpConsole connects the guest's serial console to the double's stdin and
// stdout, as Firecracker's console is its own. Output is copied until QEMU
// closes the console; if stdout fails, the rest is drained so the guest
// never blocks on a full serial port. Input is copied until stdin ends.
func (m *machine) pumpConsole(console net.Conn) {
	if m.stdin != nil {
		go func() { _, _ = io.Copy(console, m.stdin) }()
	}
	if _, err := io.Copy(m.stdout, console); err != nil {
		m.log.Warn("console output lost", "err", err)
		_, _ = io.Copy(io.Discard, console)
	}
	close(m.consoleDone)
}
