package network

import (
	"net/netip"
	"testing"
)

func TestChooseSubnet(t *testing.T) {
	p := netip.MustParsePrefix
	tests := []struct {
		used []netip.Prefix
		want string
		err  bool
	}{
		{nil, "172.30.77.0/24", false},
		{[]netip.Prefix{p("172.30.0.0/16")}, "172.31.77.0/24", false},
		{[]netip.Prefix{p("172.16.0.0/12")}, "10.213.77.0/24", false},
		{[]netip.Prefix{p("0.0.0.0/1"), p("128.0.0.0/1")}, "", true},
	}
	for _, tc := range tests {
		got, err := ChooseSubnet(DefaultCandidates, tc.used)
		if (err != nil) != tc.err || (!tc.err && got.String() != tc.want) {
			t.Errorf("used %v: got %v %v, want %s", tc.used, got, err, tc.want)
		}
	}
}

func TestMACFor(t *testing.T) {
	if got := MACFor(netip.MustParseAddr("172.30.77.2")); got != "02:00:ac:1e:4d:02" {
		t.Fatal(got)
	}
}

func TestBridgeFor(t *testing.T) {
	if BridgeFor("/var/lib/mvm", "/var/lib/mvm") != DefaultBridge {
		t.Fatal("default root")
	}
	a, b := BridgeFor("/tmp/a", "/var/lib/mvm"), BridgeFor("/tmp/b", "/var/lib/mvm")
	if a == b || len(a) > 15 || a == DefaultBridge {
		t.Fatalf("%s %s", a, b)
	}
}
