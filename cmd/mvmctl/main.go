// Command mvmctl builds microVM images and runs them as isolated, headless microVMs.
package main

import (
	"os"

	"github.com/mvm-dev/mvm/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }
