package layout

import (
	"os"
	"testing"
)

// A VM's own kernel goes with its other runtime files, except when it sleeps:
// its saved state is restored with it.
func TestRemoveRuntimeFilesKernel(t *testing.T) {
	for _, sleeping := range []bool{false, true} {
		v := VMDir{Dir: t.TempDir()}
		for _, f := range []string{v.Kernel(), v.Rootfs(), v.Token()} {
			if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if sleeping {
			v.RemoveRuntimeFilesKeepingDisks()
		} else {
			v.RemoveRuntimeFiles()
		}
		for f, kept := range map[string]bool{v.Kernel(): sleeping, v.Rootfs(): sleeping, v.Token(): false} {
			if _, err := os.Stat(f); (err == nil) != kept {
				t.Errorf("sleeping %v: %s kept = %v, want %v", sleeping, f, err == nil, kept)
			}
		}
	}
}
