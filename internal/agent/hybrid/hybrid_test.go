package hybrid

import "testing"

func TestParseConnect(t *testing.T) {
	tests := []struct {
		in   string
		port uint32
		ok   bool
	}{
		{"CONNECT 1024", 1024, true},
		{"CONNECT 0", 0, true},
		{"CONNECT -1", 0, false},
		{"CONNECT 99999999999", 0, false},
		{"connect 1024", 0, false},
		{"CONNECT", 0, false},
	}
	for _, tc := range tests {
		p, err := ParseConnect(tc.in)
		if (err == nil) != tc.ok || p != tc.port {
			t.Errorf("%q: %d %v", tc.in, p, err)
		}
	}
}

func FuzzParseConnect(f *testing.F) {
	f.Add("CONNECT 1024")
	f.Fuzz(func(t *testing.T, s string) { _, _ = ParseConnect(s) })
}
