package snapfile

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseCPUInfo(t *testing.T) {
	const info = `processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7B13
flags		: sse2 fpu avx2 sse2 vme
bugs		: sysret_ss_attrs

processor	: 1
model name	: Other CPU
flags		: fpu
`
	got, err := parseCPUInfo(strings.NewReader(info))
	if err != nil {
		t.Fatal(err)
	}
	want := CPU{Model: "AMD EPYC 7B13", Flags: []string{"avx2", "fpu", "sse2", "vme"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if _, err := parseCPUInfo(strings.NewReader("processor : 0\nmodel name : x\n")); err == nil {
		t.Error("cpuinfo without flags accepted")
	}
}

func TestHostCPU(t *testing.T) {
	cpu, err := HostCPU()
	if err != nil {
		t.Skipf("no usable /proc/cpuinfo: %v", err)
	}
	if len(cpu.Flags) == 0 || !slices.IsSorted(cpu.Flags) {
		t.Errorf("flags %v: want a sorted, non-empty list", cpu.Flags)
	}
}

func TestMissingFlags(t *testing.T) {
	tests := []struct {
		have, need, want []string
	}{
		{nil, nil, nil},
		{[]string{"a", "b"}, nil, nil},
		{[]string{"a", "b"}, []string{"b", "a"}, nil},
		{nil, []string{"z", "a", "z"}, []string{"a", "z"}},
		{[]string{"fpu", "sse2"}, []string{"avx512f", "sse2", "avx2"}, []string{"avx2", "avx512f"}},
	}
	for _, tc := range tests {
		if got := MissingFlags(tc.have, tc.need); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("MissingFlags(%v, %v) = %v, want %v", tc.have, tc.need, got, tc.want)
		}
	}
}
