package vm

import (
	"math/rand/v2"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"web", true}, {"a", true}, {"web-1", true}, {"0x", true}, {strings.Repeat("a", 63), true},
		{"", false}, {strings.Repeat("a", 64), false}, {"-web", false}, {"web-", false},
		{"Web", false}, {"we_b", false}, {"we b", false}, {"wéb", false}, {"web/..", false},
	}
	for _, tc := range tests {
		if err := ValidateName(tc.name); (err == nil) != tc.ok {
			t.Errorf("%q: err=%v want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestRandomNameValid(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200; i++ {
		if n := RandomName(r); ValidateName(n) != nil {
			t.Fatalf("random name %q is invalid", n)
		}
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  string
	}{
		{"512M", 512 << 20, ""}, {"1G", 1 << 30, ""}, {"1.5G", 3 << 29, ""}, {"64MiB", 64 << 20, ""},
		{"2g", 2 << 30, ""}, {"128 M", 128 << 20, ""}, {"4096K", 4 << 20, ""}, {"1T", 1 << 40, ""},
		{"512", 0, "no unit"}, {"", 0, "empty"}, {"abc", 0, "unknown unit"}, {"12X", 0, "unknown unit"},
		{"M", 0, "not a number"}, {"1.2.3G", 0, "not a number"}, {"-5M", 0, "unknown unit"},
	}
	for _, tc := range tests {
		got, err := ParseSize(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: got %d, %v; want error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: got %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"512M", "1.5G", "64MiB", "x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if v, err := ParseSize(s); err == nil && v < 0 {
			t.Fatalf("%q parsed to negative %d", s, v)
		}
	})
}

func TestFormatMiB(t *testing.T) {
	for in, want := range map[int64]string{512: "512M", 1024: "1G", 1536: "1.5G", 2048: "2G", 100: "100M"} {
		if got := FormatMiB(in); got != want {
			t.Errorf("%d: %s want %s", in, got, want)
		}
	}
}

func TestSpecValidate(t *testing.T) {
	good := Spec{Name: "web", Image: "default", CPUs: 1, MemoryMiB: 512, Network: NetworkDefault, Hypervisor: HypervisorAuto}
	tests := []struct {
		mut func(*Spec)
		err string
	}{
		{func(*Spec) {}, ""},
		{func(s *Spec) { s.CPUs = 0 }, "--cpus 0"},
		{func(s *Spec) { s.CPUs = 3 }, "this host has 2 cores"},
		{func(s *Spec) { s.MemoryMiB = 64 }, "at least 128M"},
		{func(s *Spec) { s.DataDiskMiB = 4 }, "at least 8M"},
		{func(s *Spec) { s.Network = "Bad Net" }, "not a network name"},
		{func(s *Spec) { s.Network = NetworkNone; s.Egress = Egress{Mode: EgressDeny} }, "needs a network"},
		{func(s *Spec) { s.Hypervisor = "xen" }, "auto, qemu or firecracker"},
		{func(s *Spec) { s.Name = "Bad" }, "invalid"},
		{func(s *Spec) { s.Image = "" }, "image is empty"},
		{func(s *Spec) { s.Jailer = true }, "add --hypervisor firecracker"},
		{func(s *Spec) { s.Jailer, s.Hypervisor = true, HypervisorFirecracker }, ""},
	}
	for _, tc := range tests {
		s := good
		tc.mut(&s)
		err := s.Validate(2)
		if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%+v: got %v, want %q", s, err, tc.err)
		}
	}
}

func TestTransitions(t *testing.T) {
	tests := []struct {
		from, to State
		ok       bool
	}{
		{StateCreating, StateStarting, true},
		{StateStarting, StateRunning, true},
		{StateRunning, StateStopping, true},
		{StateStopping, StateExited, true},
		{StateRunning, StateExited, true}, // the guest powered itself off
		{StateCreating, StateExited, true},
		{StateExited, StateRunning, false},
		{StateRunning, StateCreating, false},
		{StateStopping, StateRunning, false},
		{StateRunning, StateRunning, true},
		{StateRunning, StatePaused, true},
		{StatePaused, StateRunning, true},
		{StatePaused, StateSleeping, true},
		{StateRunning, StateSleeping, true},
		{StateSleeping, StateCreating, true}, // wake
		{StateSleeping, StateExited, true},   // down of a sleeping VM
		{StateSleeping, StateRunning, false}, // only through a new supervisor
		{StateSleeping, StatePaused, false},
		{StateExited, StateSleeping, false},
		{StateStopping, StatePaused, false},
	}
	for _, tc := range tests {
		r := Record{State: tc.from, Spec: Spec{Name: "x"}}
		err := r.SetState(tc.to)
		if (err == nil) != tc.ok {
			t.Errorf("%s -> %s: %v", tc.from, tc.to, err)
		}
		if err != nil && r.State != tc.from {
			t.Errorf("%s -> %s: state changed on a refused move", tc.from, tc.to)
		}
	}
	if StateSleeping.HasProcess() || !StatePaused.HasProcess() || !StateSleeping.Active() {
		t.Error("HasProcess/Active of sleeping or paused")
	}
	if StateExited.Active() || !StateStopping.Active() {
		t.Error("Active")
	}
}

func TestParseMiB(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		err  string
	}{
		{"512M", 512, ""}, {"1G", 1024, ""}, {"1.5G", 1536, ""},
		{"512K", 0, "whole number of MiB"}, {"300.5M", 0, "whole number of MiB"}, {"0M", 0, "too small"}, {"4M", 0, "too small"},
	}
	for _, tc := range tests {
		got, err := ParseMiB("--x", tc.in, 8)
		if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) || got != tc.want {
			t.Errorf("%q: %d %v", tc.in, got, err)
		}
	}
}

func TestFreeJailUID(t *testing.T) {
	recs := func(uids ...int) []Record {
		var out []Record
		for _, u := range uids {
			out = append(out, Record{JailUID: u})
		}
		return out
	}
	full := make([]int, JailUIDCount)
	for i := range full {
		full[i] = JailUIDBase + i
	}
	tests := []struct {
		name string
		vms  []Record
		want int
		err  bool
	}{
		{"none", nil, JailUIDBase, false},
		{"unjailed VMs hold no uid", recs(0, 0), JailUIDBase, false},
		{"lowest free", recs(JailUIDBase, JailUIDBase+2), JailUIDBase + 1, false},
		{"all taken", recs(full...), 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FreeJailUID(tc.vms)
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("FreeJailUID = %d, %v; want %d (error %v)", got, err, tc.want, tc.err)
			}
		})
	}
	if n := (Record{ID: "0123456789abcdef"}).JailName(); n != "mvm-0123456789abcdef" {
		t.Errorf("JailName = %q", n)
	}
}
