package vm

import (
	"strings"
	"testing"
)

func TestParsePort(t *testing.T) {
	tests := []struct {
		in   string
		want string
		err  string
	}{
		{"8080:80", "127.0.0.1:8080->80/tcp", ""},
		{"0.0.0.0:8080:80", "0.0.0.0:8080->80/tcp", ""},
		{"127.0.0.1:5432:5432/tcp", "127.0.0.1:5432->5432/tcp", ""},
		{"[::1]:9000:9000", "::1:9000->9000/tcp", ""},
		{"8080:80/TCP", "127.0.0.1:8080->80/tcp", ""},
		{"53:53/udp", "", "UDP is not supported"},
		{"80", "", "both the host and the guest port"},
		{"0:80", "", "1 to 65535"},
		{"8080:70000", "", "1 to 65535"},
		{"x:80", "", "1 to 65535"},
		{"+80:80", "", "1 to 65535"},
		{"foo:8080:80", "", "not an IP address"},
		{"8080:80/sctp", "", "unknown protocol"},
		{"[::1:80:80", "", "unclosed"},
	}
	for _, tc := range tests {
		p, err := ParsePort(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: got %v %v, want error with %q", tc.in, p, err, tc.err)
			}
			continue
		}
		if err != nil || p.String() != tc.want {
			t.Errorf("%q: got %v %v, want %s", tc.in, p, err, tc.want)
		}
	}
	if _, err := ParsePorts([]string{"8080:80", "127.0.0.1:8080:81"}); err == nil {
		t.Error("same host port twice accepted")
	}
}

func FuzzParsePort(f *testing.F) {
	for _, s := range []string{"8080:80", "[::1]:1:2/tcp", "0.0.0.0:1:65535", "a:b:c:d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePort(s)
		if err != nil {
			return
		}
		if p.HostPort < 1 || p.HostPort > 65535 || p.GuestPort < 1 || p.GuestPort > 65535 || p.Proto != "tcp" {
			t.Fatalf("%q accepted as %+v", s, p)
		}
		_ = p.HostAddr() // must not panic for anything accepted
	})
}
