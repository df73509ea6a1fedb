// Package guest is mvm-agent's work as PID 1 of a microVM: it turns a bare kernel into
// the guest contract (drives mounted, eth0 configured, clock and hostname set) and then
// serves the agent protocol.
package guest

import (
	"fmt"
	"net/netip"
	"strings"
)

// Cmdline is the kernel command line as key=value pairs (flags map to "").
type Cmdline map[string]string

// ParseCmdline splits /proc/cmdline the way the kernel does: on spaces, with double
// quotes grouping a value that contains spaces.
func ParseCmdline(s string) Cmdline {
	out := Cmdline{}
	var word strings.Builder
	inQuote := false
	flush := func() {
		w := word.String()
		word.Reset()
		if w == "" {
			return
		}
		k, v, _ := strings.Cut(w, "=")
		out[k] = v
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			inQuote = !inQuote
		case !inQuote && (c == ' ' || c == '\n' || c == '\t'):
			flush()
		default:
			word.WriteByte(c)
		}
	}
	flush()
	return out
}

// NetConfig is eth0's static configuration from mvm.ip= and mvm.gw=.
type NetConfig struct {
	Addr    netip.Prefix
	Gateway netip.Addr // may be invalid: no default route
}

// Net returns the static network configuration, or ok=false when there is none.
func (c Cmdline) Net() (NetConfig, bool, error) {
	ip, ok := c["mvm.ip"]
	if !ok || ip == "" {
		return NetConfig{}, false, nil
	}
	nc, err := ParseNet(ip, c["mvm.gw"])
	if err != nil {
		return NetConfig{}, false, fmt.Errorf("mvm.%w", err)
	}
	return nc, true, nil
}

// ParseNet checks an IPv4 CIDR and an optional gateway inside it.
func ParseNet(ip, gw string) (NetConfig, error) {
	p, err := netip.ParsePrefix(ip)
	if err != nil || !p.Addr().Is4() {
		return NetConfig{}, fmt.Errorf("ip=%q is not an IPv4 CIDR such as 10.0.0.2/24", ip)
	}
	nc := NetConfig{Addr: p}
	if gw != "" {
		g, err := netip.ParseAddr(gw)
		if err != nil || !g.Is4() {
			return NetConfig{}, fmt.Errorf("gw=%q is not an IPv4 address", gw)
		}
		if !p.Masked().Contains(g) {
			return NetConfig{}, fmt.Errorf("gw=%s is outside %s", g, p.Masked())
		}
		nc.Gateway = g
	}
	return nc, nil
}
