package cli

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/fcinstall"
	"github.com/mvm-dev/mvm/internal/hostcheck"
	"github.com/mvm-dev/mvm/internal/ui"
	"github.com/mvm-dev/mvm/internal/vm"
)

func newBootstrapCmd(a *app) *cobra.Command {
	var refresh, asJSON, firecracker bool
	var fcVersion string
	c := &cobra.Command{
		Use:   "bootstrap",
		Short: "Install host packages, fetch the kernel package and build the default image (safe to re-run)",
		Long: `bootstrap makes this host ready to run microVMs:
  - installs missing Debian packages (qemu-system-x86, busybox-static, e2fsprogs) with apt;
  - downloads linux-image-cloud-amd64 with 'apt-get download' into the mvm cache
    (it is unpacked there, never installed on the host);
  - builds the default image (kernel, initramfs with mvm-agent as /init, ext4 rootfs).
With --firecracker it then also installs Firecracker: it downloads the release archive
firecracker-<version>-x86_64.tgz from GitHub, checks it against the SHA-256 file published
with it, and puts firecracker and jailer into <root>/bin. Offline, put the archive and its
.sha256.txt into <root>/cache/firecracker first; the error says exactly which files.
Every step is skipped when its result is already there; unchanged inputs are never rebuilt.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root, err := a.layout()
			if err != nil {
				return err
			}
			start := time.Now()
			p := ui.NewProgress(os.Stderr, asJSON)
			if cmd.Flags().Changed("version") && !firecracker {
				return errors.New("--version is the Firecracker release to install: use it with --firecracker")
			}
			res, err := hostcheck.Bootstrap(cmd.Context(), hostcheck.BootstrapOptions{Root: root, RefreshKernel: refresh, Progress: p.Step,
				Firecracker: firecracker, FirecrackerVersion: fcVersion})
			if err != nil {
				if res.Image.Digest != "" && !asJSON {
					// The QEMU part is done; say so before the Firecracker error.
					printImage(a, res, start)
				}
				return err
			}
			if asJSON {
				return ui.JSON(a.stdout, res)
			}
			printImage(a, res, start)
			if fc := res.Firecracker; fc != nil {
				state := "already installed, verified"
				if fc.Installed {
					state = "installed from " + fc.Source + ", SHA-256 " + fc.ArchiveSHA256[:12] + " verified"
				}
				fmt.Fprintf(a.stdout, "firecracker %s (%s): %s, %s\n", fc.Version, state, fc.Programs["firecracker"], fc.Programs["jailer"])
			}
			return nil
		},
	}
	c.Flags().BoolVar(&refresh, "refresh-kernel", false, "download the kernel package again even if one is cached")
	c.Flags().BoolVar(&firecracker, "firecracker", false, "also install Firecracker (firecracker and jailer) into <root>/bin")
	c.Flags().StringVar(&fcVersion, "version", fcinstall.DefaultVersion, "the Firecracker release to install (with --firecracker)")
	c.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON (and no progress)")
	return c
}

func printImage(a *app, res hostcheck.BootstrapResult, start time.Time) {
	state := "up to date"
	if res.Built {
		state = "built"
	}
	fmt.Fprintf(a.stdout, "default image %s (%s): kernel %s, %s total, in %.1fs\n",
		res.Image.Digest[:12], state, res.Image.KernelRelease,
		vm.FormatBytes(res.Image.Sizes["vmlinux"]+res.Image.Sizes["initrd.gz"]+res.Image.Sizes["rootfs.ext4"]),
		time.Since(start).Seconds())
}
