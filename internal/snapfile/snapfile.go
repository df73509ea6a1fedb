// Package snapfile is the on-disk format of VM snapshots: the sealed metadata
// file, the digests it records, verified copying of snapshot files, the host key
// that seals them and the host CPU facts used for compatibility checks.
//
// A snapshot is a directory holding "memory" (QEMU's memory and device state),
// "rootfs" and optionally "data" (copies of the VM's writable disks), "token"
// (the agent token), "kernel" for a VM that booted a kernel of its own (up
// --kernel), and "meta.json". meta.json records compatibility facts and a
// Digest of every other file, and is sealed with HMAC-SHA256 under a per-host
// key (LoadOrCreateKey), so a snapshot that was modified or truncated after it
// was taken is refused (ErrTampered) instead of being restored.
//
// Digests are defined over the logical content of a file in 4 KiB blocks with
// all-zero blocks left out, so that sparse disk images are digested at the cost
// of their allocated data, and a file can be digested while it is streamed.
package snapfile

import "errors"

// Format is the version of the metadata format written by this package.
// Open refuses any other version rather than guess at its meaning.
const Format = 1

// ErrTampered reports that sealed data does not match: the metadata's MAC is
// wrong, or a file's content does not match the digest recorded for it.
var ErrTampered = errors.New("snapshot was modified or is incomplete")

// Base names of the files a snapshot directory may hold besides meta.json.
const (
	FileMemory = "memory"
	// FileState is Firecracker's device state; its guest memory is FileMemory.
	FileState  = "state"
	FileRootfs = "rootfs"
	FileData   = "data"
	FileToken  = "token"
	// FileKernel is the VM's own kernel (up --kernel), which a restore must
	// boot: a VM on its image's kernel has none, the image holds it.
	FileKernel = "kernel"

	// MetaFile is the name of the sealed metadata file.
	MetaFile = "meta.json"
)
