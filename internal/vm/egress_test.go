package vm

import (
	"strings"
	"testing"
)

func TestParseEgress(t *testing.T) {
	tests := []struct {
		in   string
		want string
		err  string
	}{
		{"", "allow", ""},
		{"allow", "allow", ""},
		{"deny", "deny", ""},
		{"allow=10.9.0.5:443,db.internal:5432", "allow=10.9.0.5:443,db.internal:5432", ""},
		{"allow=", "", "use allow, deny"},
		{"block", "", "use allow, deny"},
		{"allow=10.9.0.5", "", "not HOST:PORT"},
		{"allow=10.9.0.5:0", "", "1-65535"},
		{"allow=bad_host:80", "", "neither an address"},
		{"allow=[::1]:80", "", "only IPv4"},
	}
	for _, tc := range tests {
		e, err := ParseEgress(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v %v", tc.in, e, err)
			}
			continue
		}
		if err != nil || e.String() != tc.want {
			t.Errorf("%q: %v %v", tc.in, e, err)
		}
	}
}

func FuzzParseEgress(f *testing.F) {
	f.Add("allow=10.9.0.5:443,db.internal:5432")
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseEgress(s)
		if err == nil && e.Mode == EgressList && len(e.Allow) == 0 {
			t.Fatalf("%q: list without entries", s)
		}
	})
}
