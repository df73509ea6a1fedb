package image

import "syscall"

// allocated returns the bytes a (possibly sparse) file occupies on disk.
func allocated(path string) int64 {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}
