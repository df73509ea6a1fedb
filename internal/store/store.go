// Package store is mvm's persistent state: VMs, networks and address allocations in
// one bbolt database under the mvm root. It is the only package that writes state.
//
// bbolt allows one writer process at a time (it holds an flock while open), so the
// database is opened for each transaction and closed right after: concurrent mvmctl
// commands and supervisors queue on the lock for milliseconds, never for a VM's life.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/mvm-dev/mvm/internal/vm"
)

var (
	bucketVMs      = []byte("vms")
	bucketNetworks = []byte("networks")
	bucketIPs      = []byte("ips") // sub-bucket per network: address -> VM id
	bucketMeta     = []byte("meta")
)

// minDBSize is the size of an initialised bbolt file: four pages.
const minDBSize = 4 * 4096

// ErrNotFound is returned for a missing record.
var ErrNotFound = errors.New("not found")

// Store opens the database per transaction.
type Store struct {
	path    string
	timeout time.Duration
}

// New returns the store kept in dir (created on first write).
func New(dir string) *Store {
	return &Store{path: filepath.Join(dir, "state.db"), timeout: 30 * time.Second}
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

func (s *Store) open(readOnly bool) (*bolt.DB, error) {
	if readOnly {
		// A missing or not yet initialised file is created by a read-write open, which
		// holds the exclusive lock while bbolt writes its first pages; a read-only open
		// of a half-made file would fail.
		if st, err := os.Stat(s.path); err != nil || st.Size() < minDBSize {
			readOnly = false
		}
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o755); err != nil {
		return nil, err
	}
	db, err := bolt.Open(s.path, 0o600, &bolt.Options{Timeout: s.timeout, ReadOnly: readOnly})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("state database %s is locked by another mvm process for over %s", s.path, s.timeout)
		}
		return nil, fmt.Errorf("open state database %s: %w", s.path, err)
	}
	if !readOnly {
		err = db.Update(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{bucketVMs, bucketNetworks, bucketIPs, bucketMeta, bucketSnapshots, bucketTemplates} {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			db.Close()
			return nil, err
		}
	}
	return db, nil
}

// View runs fn in a read-only transaction.
func (s *Store) View(fn func(*Tx) error) error {
	db, err := s.open(true)
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error { return fn(&Tx{tx}) })
}

// Update runs fn in a read-write transaction; an error rolls everything back.
func (s *Store) Update(fn func(*Tx) error) error {
	db, err := s.open(false)
	if err != nil {
		return err
	}
	defer db.Close()
	return db.Update(func(tx *bolt.Tx) error { return fn(&Tx{tx}) })
}

// Tx is a transaction.
type Tx struct{ tx *bolt.Tx }

func (t *Tx) get(bucket []byte, key string, v any) error {
	b := t.tx.Bucket(bucket)
	if b == nil {
		return ErrNotFound
	}
	raw := b.Get([]byte(key))
	if raw == nil {
		return ErrNotFound
	}
	return json.Unmarshal(raw, v)
}

func (t *Tx) put(bucket []byte, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return t.tx.Bucket(bucket).Put([]byte(key), raw)
}

// VM returns a VM by name.
func (t *Tx) VM(name string) (vm.Record, error) {
	var r vm.Record
	if err := t.get(bucketVMs, name, &r); err != nil {
		if errors.Is(err, ErrNotFound) {
			return r, fmt.Errorf("no VM named %q: see `mvmctl ls -a`: %w", name, ErrNotFound)
		}
		return r, err
	}
	return r, nil
}

// VMs returns every VM, oldest first.
func (t *Tx) VMs() ([]vm.Record, error) {
	var out []vm.Record
	b := t.tx.Bucket(bucketVMs)
	if b == nil {
		return nil, nil
	}
	err := b.ForEach(func(_, raw []byte) error {
		var r vm.Record
		if err := json.Unmarshal(raw, &r); err != nil {
			return err
		}
		out = append(out, r)
		return nil
	})
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].Spec.Name < out[j].Spec.Name
	})
	return out, err
}

// HasVM reports whether a name is taken.
func (t *Tx) HasVM(name string) bool {
	b := t.tx.Bucket(bucketVMs)
	return b != nil && b.Get([]byte(name)) != nil
}

// PutVM writes a VM record.
func (t *Tx) PutVM(r vm.Record) error { return t.put(bucketVMs, r.Spec.Name, r) }

// DeleteVM removes a VM record.
func (t *Tx) DeleteVM(name string) error { return t.tx.Bucket(bucketVMs).Delete([]byte(name)) }

// MarkExited records that the VM name (with this id) has ended, and frees its address.
// It does nothing if the record is gone, belongs to another VM of the same name, or
// is already exited, so the supervisor and reconcile can both call it.
func (t *Tx) MarkExited(name, id, reason string, at time.Time) error {
	r, err := t.VM(name)
	if err != nil || r.ID != id || !r.State.Active() {
		return nil
	}
	if ip, err := netip.ParsePrefix(r.IP); err == nil {
		if err := t.ReleaseIP(r.Spec.Network, ip.Addr(), r.ID); err != nil {
			return err
		}
	}
	r.State = vm.StateExited
	r.ExitedAt = at.UTC()
	r.ExitReason = reason
	return t.PutVM(r)
}

// MarkSleeping records that the VM's hypervisor has ended with its state saved to
// disk: it keeps its address, and has no process for reconcile to look after.
func (t *Tx) MarkSleeping(name, id string, at time.Time) error {
	r, err := t.VM(name)
	if err != nil || r.ID != id || !r.State.Active() {
		return nil
	}
	if r.SleptAt.IsZero() {
		r.SleptAt = at.UTC()
	}
	r.State = vm.StateSleeping
	r.SupervisorPID, r.SupervisorStart, r.HypervisorPID, r.HypervisorStart = 0, 0, 0, 0
	return t.PutVM(r)
}

// Network is a bridge with a subnet that VMs get addresses from.
type Network struct {
	Name     string       `json:"name"`
	Bridge   string       `json:"bridge"`
	Subnet   netip.Prefix `json:"subnet"`
	Gateway  netip.Addr   `json:"gateway"`
	NAT      bool         `json:"nat"`
	Isolated bool         `json:"isolated"`
	// DNS are the resolvers the gateway's DNS forwards to; empty: the host's own.
	DNS     []netip.AddrPort `json:"dns,omitempty"`
	Created time.Time        `json:"created"`
}

// Networks returns every network, by name.
func (t *Tx) Networks() ([]Network, error) {
	var out []Network
	b := t.tx.Bucket(bucketNetworks)
	if b == nil {
		return nil, nil
	}
	err := b.ForEach(func(_, raw []byte) error {
		var n Network
		if err := json.Unmarshal(raw, &n); err != nil {
			return err
		}
		out = append(out, n)
		return nil
	})
	return out, err
}

// DeleteNetwork removes a network and its allocations.
func (t *Tx) DeleteNetwork(name string) error {
	if err := t.tx.Bucket(bucketNetworks).Delete([]byte(name)); err != nil {
		return err
	}
	if t.tx.Bucket(bucketIPs).Bucket([]byte(name)) != nil {
		return t.tx.Bucket(bucketIPs).DeleteBucket([]byte(name))
	}
	return nil
}

// Meta returns a value of the store's own bookkeeping ("" if unset).
func (t *Tx) Meta(key string) string {
	b := t.tx.Bucket(bucketMeta)
	if b == nil {
		return ""
	}
	return string(b.Get([]byte(key)))
}

// SetMeta sets (or, with "", deletes) a bookkeeping value.
func (t *Tx) SetMeta(key, value string) error {
	if value == "" {
		return t.tx.Bucket(bucketMeta).Delete([]byte(key))
	}
	return t.tx.Bucket(bucketMeta).Put([]byte(key), []byte(value))
}

// Network returns a network by name.
func (t *Tx) Network(name string) (Network, error) {
	var n Network
	err := t.get(bucketNetworks, name, &n)
	return n, err
}

// PutNetwork writes a network.
func (t *Tx) PutNetwork(n Network) error { return t.put(bucketNetworks, n.Name, n) }

// AllocateIP hands out the lowest free host address of the network to owner. Inside a
// write transaction it is atomic across processes.
func (t *Tx) AllocateIP(netName, owner string) (netip.Addr, error) {
	n, err := t.Network(netName)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("network %s: %w", netName, err)
	}
	b, err := t.tx.Bucket(bucketIPs).CreateBucketIfNotExists([]byte(netName))
	if err != nil {
		return netip.Addr{}, err
	}
	last := lastAddr(n.Subnet)
	for a := n.Subnet.Masked().Addr().Next(); a.IsValid() && a.Less(last); a = a.Next() {
		if a == n.Gateway || b.Get([]byte(a.String())) != nil {
			continue
		}
		if err := b.Put([]byte(a.String()), []byte(owner)); err != nil {
			return netip.Addr{}, err
		}
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("network %s (%s) has no free address: remove VMs with `mvmctl down`", netName, n.Subnet)
}

// ReleaseIP frees an address if owner holds it.
func (t *Tx) ReleaseIP(netName string, a netip.Addr, owner string) error {
	b := t.tx.Bucket(bucketIPs).Bucket([]byte(netName))
	if b == nil || !a.IsValid() {
		return nil
	}
	if got := b.Get([]byte(a.String())); got != nil && string(got) == owner {
		return b.Delete([]byte(a.String()))
	}
	return nil
}

// IPs returns the network's allocations: address -> owner.
func (t *Tx) IPs(netName string) map[netip.Addr]string {
	out := map[netip.Addr]string{}
	b := t.tx.Bucket(bucketIPs).Bucket([]byte(netName))
	if b == nil {
		return out
	}
	_ = b.ForEach(func(k, v []byte) error {
		if a, err := netip.ParseAddr(string(k)); err == nil {
			out[a] = string(v)
		}
		return nil
	})
	return out
}

// lastAddr is the broadcast address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := 32 - p.Bits()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= (1 << host) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
