package store

import (
	"encoding/json"
	"sort"
	"time"
)

var (
	bucketSnapshots = []byte("snapshots")
	bucketTemplates = []byte("templates")
)

// Snapshot is a saved VM that new VMs can start from. Its files live in the
// snapshot directory named by ID; their sealed metadata is the authority on what
// they hold, this record is what listing and name lookups need.
type Snapshot struct {
	Name           string    `json:"name"`
	ID             string    `json:"id"`
	Source         string    `json:"source"` // the VM it was taken from
	CreatedAt      time.Time `json:"created_at"`
	SizeBytes      int64     `json:"size_bytes"` // allocated on disk
	Image          string    `json:"image"`
	ImageDigest    string    `json:"image_digest"`
	CPUs           int       `json:"cpus"`
	MemoryMiB      int64     `json:"memory_mib"`
	DataDiskMiB    int64     `json:"data_disk_mib,omitempty"`
	Network        string    `json:"network"` // the source's network ("none": no NIC)
	Backend        string    `json:"backend"`
	BackendVersion string    `json:"backend_version"`
	Accel          string    `json:"accel"`
}

// Template is an image with resources and, once built, a snapshot to start from.
type Template struct {
	Name        string    `json:"name"`
	Image       string    `json:"image"`
	CPUs        int       `json:"cpus"`
	MemoryMiB   int64     `json:"memory_mib"`
	DataDiskMiB int64     `json:"data_disk_mib,omitempty"`
	Network     string    `json:"network"`
	Health      string    `json:"health,omitempty"`     // shell command that must succeed before the snapshot
	Hypervisor  string    `json:"hypervisor,omitempty"` // empty: auto
	Kernel      string    `json:"kernel,omitempty"`     // absolute path; empty: the image's
	Jailer      bool      `json:"jailer,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	Snapshot    *Snapshot `json:"snapshot,omitempty"` // nil until built
	BuiltAt     time.Time `json:"built_at,omitzero"`
}

// Snapshot returns a user snapshot by name.
func (t *Tx) Snapshot(name string) (Snapshot, error) {
	var s Snapshot
	err := t.get(bucketSnapshots, name, &s)
	return s, err
}

// PutSnapshot writes a user snapshot.
func (t *Tx) PutSnapshot(s Snapshot) error { return t.put(bucketSnapshots, s.Name, s) }

// DeleteSnapshot removes a user snapshot's record.
func (t *Tx) DeleteSnapshot(name string) error {
	return t.tx.Bucket(bucketSnapshots).Delete([]byte(name))
}

// Snapshots returns the user snapshots, oldest first.
func (t *Tx) Snapshots() ([]Snapshot, error) {
	var out []Snapshot
	b := t.tx.Bucket(bucketSnapshots)
	if b == nil { // a database from before snapshots, opened read-only
		return nil, nil
	}
	err := b.ForEach(func(_, raw []byte) error {
		var s Snapshot
		if err := json.Unmarshal(raw, &s); err != nil {
			return err
		}
		out = append(out, s)
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, err
}

// Template returns a template by name.
func (t *Tx) Template(name string) (Template, error) {
	var tp Template
	err := t.get(bucketTemplates, name, &tp)
	return tp, err
}

// PutTemplate writes a template.
func (t *Tx) PutTemplate(tp Template) error { return t.put(bucketTemplates, tp.Name, tp) }

// DeleteTemplate removes a template's record.
func (t *Tx) DeleteTemplate(name string) error {
	return t.tx.Bucket(bucketTemplates).Delete([]byte(name))
}

// Templates returns every template, by name.
func (t *Tx) Templates() ([]Template, error) {
	var out []Template
	b := t.tx.Bucket(bucketTemplates)
	if b == nil {
		return nil, nil
	}
	err := b.ForEach(func(_, raw []byte) error {
		var tp Template
		if err := json.Unmarshal(raw, &tp); err != nil {
			return err
		}
		out = append(out, tp)
		return nil
	})
	return out, err
}
