// Command firecracker is the QEMU test double of the firecracker program
// (see package qemudouble): a test tool that serves Firecracker's API and
// runs the guest on QEMU. It is not Firecracker and never stands in for it
// outside tests; `firecracker --version` says so on its second line.
//
// Build it under the name firecracker, so mvm's Firecracker backend finds it:
//
//	go build -o DIR/firecracker ./internal/vmm/firecracker/qemudouble/cmd/firecracker
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mvm-dev/mvm/internal/vmm/firecracker/qemudouble"
)

func main() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	caught := make(chan os.Signal, 1) // the signal that stopped Run, or nil
	go func() {
		select {
		case sig := <-sigs:
			caught <- sig
			cancel()
		case <-stopped:
			caught <- nil
		}
	}()
	code := qemudouble.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	close(stopped)
	cancel()
	if sig, ok := (<-caught).(syscall.Signal); ok {
		// QEMU is gone; now die of the signal, as Firecracker would, so the
		// caller sees a killed process and not a guest that exited.
		signal.Reset(sig)
		_ = syscall.Kill(os.Getpid(), sig)
		// The signal arrives asynchronously; exiting at once could beat it.
		time.Sleep(5 * time.Second)
	}
	os.Exit(code)
}
