// Command jailer is the test double of Firecracker's jailer (see
// qemudouble.RunJailer): a test tool that builds a VM's jail as the jailer
// does and execs the Firecracker test double in place of itself, without
// entering the chroot or switching uid. It is not Firecracker's jailer and
// never stands in for it outside tests; `jailer --version` says so on its
// second line.
//
// Build it under the name jailer, beside the Firecracker test double:
//
//	go build -o DIR/jailer ./internal/vmm/firecracker/qemudouble/cmd/jailer
//	go build -o DIR/firecracker ./internal/vmm/firecracker/qemudouble/cmd/firecracker
package main

import (
	"os"
	"runtime"

	"github.com/mvm-dev/mvm/internal/vmm/firecracker/qemudouble"
)

// init locks main to the process's main thread: the network namespace the
// jailer joins and the parent-death signal belong to a thread, and the exec
// must happen on the thread that has them.
func init() { runtime.LockOSThread() }

func main() {
	os.Exit(qemudouble.RunJailer(os.Args[1:], os.Stdout, os.Stderr))
}
