package store

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/mvm-dev/mvm/internal/vm"
)

func newNet(t *testing.T, s *Store, subnet string) {
	t.Helper()
	p := netip.MustParsePrefix(subnet)
	err := s.Update(func(tx *Tx) error {
		return tx.PutNetwork(Network{Name: "default", Bridge: "mvmbr0", Subnet: p, Gateway: p.Addr().Next()})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestVMRoundTrip(t *testing.T) {
	s := New(t.TempDir())
	r := vm.Record{ID: "abc", Spec: vm.Spec{Name: "web", CPUs: 1, MemoryMiB: 256}, State: vm.StateRunning}
	if err := s.Update(func(tx *Tx) error { return tx.PutVM(r) }); err != nil {
		t.Fatal(err)
	}
	err := s.View(func(tx *Tx) error {
		got, err := tx.VM("web")
		if err != nil || got.ID != "abc" || got.State != vm.StateRunning {
			return fmt.Errorf("got %+v %v", got, err)
		}
		if _, err := tx.VM("nope"); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("missing VM: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestAllocateSkipsGatewayAndReleases(t *testing.T) {
	s := New(t.TempDir())
	newNet(t, s, "10.9.0.0/29") // hosts .1-.6; .1 is the gateway
	var got []string
	for i := 0; i < 5; i++ {
		_ = s.Update(func(tx *Tx) error {
			a, err := tx.AllocateIP("default", fmt.Sprint("vm", i))
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, a.String())
			return nil
		})
	}
	want := "[10.9.0.2 10.9.0.3 10.9.0.4 10.9.0.5 10.9.0.6]"
	if fmt.Sprint(got) != want {
		t.Fatalf("got %v want %s", got, want)
	}
	err := s.Update(func(tx *Tx) error { _, err := tx.AllocateIP("default", "x"); return err })
	if err == nil {
		t.Fatal("allocation from a full network succeeded")
	}
	// Only the owner can release.
	_ = s.Update(func(tx *Tx) error { return tx.ReleaseIP("default", netip.MustParseAddr("10.9.0.3"), "someone-else") })
	_ = s.Update(func(tx *Tx) error { return tx.ReleaseIP("default", netip.MustParseAddr("10.9.0.4"), "vm2") })
	_ = s.Update(func(tx *Tx) error {
		a, err := tx.AllocateIP("default", "new")
		if err != nil || a.String() != "10.9.0.4" {
			t.Fatalf("reuse: %v %v", a, err)
		}
		return nil
	})
}

// Parallel allocations (separate opens, as separate processes do) never share an address.
func TestParallelAllocationsDistinct(t *testing.T) {
	dir := t.TempDir()
	newNet(t, New(dir), "10.9.0.0/24")
	var mu sync.Mutex
	seen := map[netip.Addr]bool{}
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := New(dir).Update(func(tx *Tx) error {
				a, err := tx.AllocateIP("default", fmt.Sprint("vm", i))
				mu.Lock()
				defer mu.Unlock()
				if seen[a] {
					t.Errorf("%v handed out twice", a)
				}
				seen[a] = true
				return err
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if len(seen) != 16 {
		t.Fatalf("%d addresses", len(seen))
	}
}
