package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mvm-dev/mvm/internal/ui"
	"github.com/mvm-dev/mvm/internal/vm"
)

func newImageCmd(a *app) *cobra.Command {
	c := &cobra.Command{Use: "image", Short: "Manage microVM images"}
	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List images with their size, digest and kernel",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rt, err := a.runtime()
			if err != nil {
				return err
			}
			imgs, err := rt.Images.List()
			if err != nil {
				return err
			}
			if asJSON {
				type view struct {
					Name      string   `json:"name"`
					Digest    string   `json:"digest"`
					Kernel    string   `json:"kernel"`
					Size      int64    `json:"size_bytes"`
					DiskUsage int64    `json:"disk_usage_bytes"`
					Created   string   `json:"created"`
					Backends  []string `json:"backends"`
					// Why the kernel cannot boot on each backend left out; absent for
					// images built before it was recorded.
					Unsupported map[string]string `json:"unsupported_backends,omitempty"`
				}
				out := []view{}
				for _, i := range imgs {
					var size int64
					for _, s := range i.Sizes {
						size += s
					}
					out = append(out, view{i.Name, i.Digest, i.KernelRelease, size, i.DiskUsage(), i.Created.Format("2006-01-02T15:04:05Z07:00"), i.Backends, i.Unsupported})
				}
				return ui.JSON(a.stdout, out)
			}
			t := ui.NewTable(a.stdout, "NAME", "DIGEST", "KERNEL", "SIZE", "ON DISK", "CREATED", "BACKENDS")
			for _, i := range imgs {
				var size int64
				for _, s := range i.Sizes {
					size += s
				}
				t.Row(i.Name, i.Digest[:12], i.KernelRelease, vm.FormatBytes(size), vm.FormatBytes(i.DiskUsage()), i.Created.Local().Format("2006-01-02 15:04"), strings.Join(i.Backends, ","))
			}
			if len(imgs) == 0 {
				fmt.Fprintln(a.stderr, "no images yet: run `mvmctl bootstrap`")
			}
			return t.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print a JSON array")
	c.AddCommand(ls)
	return c
}
