package kmod

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseModinfoSection(t *testing.T) {
	raw := "alias=virtio:d00000004v*\x00depends=virtio_ring,virtio\x00name=virtio_rng\x00vermagic=6.1\x00"
	info := ParseModinfoSection([]byte(raw), "virtio-rng.ko")
	want := Info{Name: "virtio_rng", Depends: []string{"virtio_ring", "virtio"}, Aliases: []string{"virtio:d00000004v*"}}
	if !reflect.DeepEqual(info, want) {
		t.Fatalf("got %+v want %+v", info, want)
	}
	if got := ParseModinfoSection([]byte("depends=\x00"), "net-failover.ko"); got.Name != "net_failover" || got.Depends != nil {
		t.Fatalf("empty depends: %+v", got)
	}
}

var virtio = map[string]Info{
	"virtio_ring":    {Name: "virtio_ring"},
	"virtio":         {Name: "virtio"},
	"virtio_mmio":    {Name: "virtio_mmio", Depends: []string{"virtio", "virtio_ring"}},
	"virtio_blk":     {Name: "virtio_blk", Depends: []string{"virtio", "virtio_ring"}, Aliases: []string{"virtio:d00000002v*"}},
	"failover":       {Name: "failover"},
	"net_failover":   {Name: "net_failover", Depends: []string{"failover"}},
	"virtio_net":     {Name: "virtio_net", Depends: []string{"net_failover", "virtio", "virtio_ring"}, Aliases: []string{"virtio:d00000001v*"}},
	"virtio_console": {Name: "virtio_console", Depends: []string{"virtio", "virtio_ring"}, Aliases: []string{"virtio:d00000003v*"}},
	"virtio_rng":     {Name: "virtio_rng", Depends: []string{"virtio", "virtio_ring"}, Aliases: []string{"virtio:d00000004v*"}},
	"loop_a":         {Name: "loop_a", Depends: []string{"loop_b"}},
	"loop_b":         {Name: "loop_b", Depends: []string{"loop_a"}},
	"needs_missing":  {Name: "needs_missing", Depends: []string{"ghost"}},
}

func TestClosureOrder(t *testing.T) {
	tests := []struct {
		roots   []string
		want    string
		wantErr string
	}{
		{[]string{"virtio_mmio", "virtio-blk", "virtio_net", "virtio_console", "virtio_rng"},
			"virtio virtio_ring virtio_blk virtio_console virtio_mmio failover net_failover virtio_net virtio_rng", ""},
		{[]string{"virtio_net"}, "failover net_failover virtio virtio_ring virtio_net", ""},
		{[]string{"loop_a"}, "", "cycle"},
		{[]string{"needs_missing"}, "", "ghost (needed by needs_missing) not found"},
		{[]string{"nope"}, "", "nope not found"},
	}
	for _, tc := range tests {
		got, err := Closure(virtio, tc.roots)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v: err %v, want %q", tc.roots, err, tc.wantErr)
			}
			continue
		}
		if err != nil || strings.Join(got, " ") != tc.want {
			t.Errorf("%v: got %v (%v)\nwant %s", tc.roots, got, err, tc.want)
		}
		// Every module comes after all of its dependencies.
		pos := map[string]int{}
		for i, n := range got {
			pos[n] = i
		}
		for _, n := range got {
			for _, d := range virtio[n].Depends {
				if pos[d] > pos[n] {
					t.Errorf("%s loaded before its dependency %s", n, d)
				}
			}
		}
	}
}

func TestManifestSelect(t *testing.T) {
	order, _ := Closure(virtio, []string{"virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "virtio_rng"})
	var m Manifest
	for _, n := range order {
		in := virtio[n]
		m.Modules = append(m.Modules, Module{Name: n, Depends: in.Depends, Aliases: in.Aliases, Always: n == "virtio_mmio"})
	}
	names := func(ms []Module) string {
		var s []string
		for _, x := range ms {
			s = append(s, x.Name)
		}
		return strings.Join(s, " ")
	}
	if got := names(m.Bus()); got != "virtio virtio_ring virtio_mmio" {
		t.Fatalf("bus: %s", got)
	}
	// A VM with disks and a console but no NIC loads no network drivers.
	got := names(m.Select([]string{"virtio:d00000002v00001AF4", "virtio:d00000003v00001AF4"}))
	if got != "virtio virtio_ring virtio_blk virtio_console virtio_mmio" {
		t.Fatalf("select: %s", got)
	}
}

func TestManifestBuiltFor(t *testing.T) {
	m := Manifest{Kernel: "6.1.0-48-cloud-amd64"}
	for release, want := range map[string]bool{"6.1.0-48-cloud-amd64": true, "6.1.0-49-cloud-amd64": false, "6.6.7-fc-ci": false, "": false} {
		if got := m.BuiltFor(release); got != want {
			t.Errorf("BuiltFor(%q) = %v, want %v", release, got, want)
		}
	}
	if !(Manifest{}).BuiltFor("6.6.7") {
		t.Error("a manifest naming no kernel is for any")
	}
}
