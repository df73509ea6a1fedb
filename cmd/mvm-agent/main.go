// Command mvm-agent is the guest side of mvm: PID 1 of the default image (or a service
// in a guest with its own init). It talks to the host only over vsock or a
// virtio-serial port, never SSH.
package main

import (
	"fmt"
	"os"

	"github.com/mvm-dev/mvm/internal/guest"
	"github.com/mvm-dev/mvm/internal/version"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "--version" || os.Args[1] == "version") {
		fmt.Println("mvm-agent", version.String())
		return
	}
	if err := guest.Main(); err != nil {
		fmt.Fprintln(os.Stderr, "mvm-agent:", err)
		os.Exit(1)
	}
}
