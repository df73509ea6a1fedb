package guest

import (
	"net/netip"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	c := ParseCmdline(`console=ttyS0 quiet mvm.ip=10.0.0.2/24 mvm.gw=10.0.0.1 msg="a b=c" x=` + "\n")
	want := map[string]string{"console": "ttyS0", "quiet": "", "mvm.ip": "10.0.0.2/24", "mvm.gw": "10.0.0.1", "msg": "a b=c", "x": ""}
	for k, v := range want {
		if got, ok := c[k]; !ok || got != v {
			t.Errorf("%s: got %q (%v), want %q", k, got, ok, v)
		}
	}
	if len(c) != len(want) {
		t.Errorf("extra keys: %v", c)
	}
}

func TestNet(t *testing.T) {
	tests := []struct {
		line    string
		ok      bool
		wantErr bool
		gw      string
	}{
		{"mvm.ip=10.0.0.2/24 mvm.gw=10.0.0.1", true, false, "10.0.0.1"},
		{"mvm.ip=10.0.0.2/24", true, false, ""},
		{"quiet", false, false, ""},
		{"mvm.ip=10.0.0.2", false, true, ""},
		{"mvm.ip=fd00::2/64", false, true, ""},
		{"mvm.ip=10.0.0.2/24 mvm.gw=10.0.1.1", false, true, ""},
		{"mvm.ip=10.0.0.2/24 mvm.gw=nope", false, true, ""},
	}
	for _, tc := range tests {
		nc, ok, err := ParseCmdline(tc.line).Net()
		if ok != tc.ok || (err != nil) != tc.wantErr {
			t.Errorf("%q: ok=%v err=%v", tc.line, ok, err)
			continue
		}
		if tc.gw != "" && nc.Gateway != netip.MustParseAddr(tc.gw) {
			t.Errorf("%q: gw %v", tc.line, nc.Gateway)
		}
	}
}

func FuzzCmdline(f *testing.F) {
	f.Add(`console=ttyS0 mvm.ip=10.0.0.2/24 mvm.gw=10.0.0.1 "q=a b"`)
	f.Fuzz(func(t *testing.T, s string) {
		c := ParseCmdline(s)
		nc, ok, err := c.Net()
		if ok && err == nil && nc.Gateway.IsValid() && !nc.Addr.Masked().Contains(nc.Gateway) {
			t.Fatalf("gateway %v outside %v accepted", nc.Gateway, nc.Addr)
		}
	})
}
