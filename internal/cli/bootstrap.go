package cli

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/hostcheck"
	"github.com/mvm-dev/mvm/internal/ui"
	"github.com/mvm-dev/mvm/internal/vm"
)

func newBootstrapCmd(a *app) *cobra.Command {
	var refresh, asJSON bool
	c := &cobra.Command{
		Use:   "bootstrap",
		Short: "Install host packages, fetch the kernel package and build the default image (safe to re-run)",
		Long: `bootstrap makes this host ready to run microVMs:
  - installs missing Debian packages (qemu-system-x86, busybox-static, e2fsprogs) with apt;
  - downloads linux-image-cloud-amd64 with 'apt-get download' into the mvm cache
    (it is unpacked there, never installed on the host);
  - builds the default image (kernel, initramfs with mvm-agent as /init, ext4 rootfs).
Every step is skipped when its result is already there; unchanged inputs are never rebuilt.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root, err := a.layout()
			if err != nil {
				return err
			}
			start := time.Now()
			p := ui.NewProgress(os.Stderr, asJSON)
			res, err := hostcheck.Bootstrap(cmd.Context(), hostcheck.BootstrapOptions{Root: root, RefreshKernel: refresh, Progress: p.Step})
			if err != nil {
				return err
			}
			if asJSON {
				return ui.JSON(a.stdout, res)
			}
			state := "up to date"
			if res.Built {
				state = "built"
			}
			fmt.Fprintf(a.stdout, "default image %s (%s): kernel %s, %s total, in %.1fs\n",
				res.Image.Digest[:12], state, res.Image.KernelRelease,
				vm.FormatBytes(res.Image.Sizes["vmlinux"]+res.Image.Sizes["initrd.gz"]+res.Image.Sizes["rootfs.ext4"]),
				time.Since(start).Seconds())
			return nil
		},
	}
	c.Flags().BoolVar(&refresh, "refresh-kernel", false, "download the kernel package again even if one is cached")
	c.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON (and no progress)")
	return c
}
