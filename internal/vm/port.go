package vm

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// DefaultPublishIP is where published ports listen unless an address is given: the
// host's loopback, not every interface (docker's default of all interfaces exposes
// services by surprise).
const DefaultPublishIP = "127.0.0.1"

// PortSpec publishes a guest port on the host.
type PortSpec struct {
	HostIP    string `json:"host_ip"`
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
	Proto     string `json:"proto"` // "tcp"
}

func (p PortSpec) String() string {
	return fmt.Sprintf("%s:%d->%d/%s", p.HostIP, p.HostPort, p.GuestPort, p.Proto)
}

// HostAddr is the address to listen on.
func (p PortSpec) HostAddr() string {
	return netip.AddrPortFrom(netip.MustParseAddr(p.HostIP), uint16(p.HostPort)).String()
}

// ParsePort parses [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp] (an IPv6 host address goes in
// brackets: [::1]:8080:80).
func ParsePort(s string) (PortSpec, error) {
	bad := func(why string) (PortSpec, error) {
		return PortSpec{}, fmt.Errorf("port %q: %s; use [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp], e.g. 8080:80", s, why)
	}
	spec, proto := s, "tcp"
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		spec, proto = s[:i], strings.ToLower(s[i+1:])
	}
	switch proto {
	case "tcp":
	case "udp":
		return bad("UDP is not supported yet, only TCP")
	default:
		return bad("unknown protocol " + strconv.Quote(proto))
	}
	hostIP := DefaultPublishIP
	if strings.HasPrefix(spec, "[") {
		end := strings.Index(spec, "]:")
		if end < 0 {
			return bad("unclosed [ in the host address")
		}
		hostIP, spec = spec[1:end], spec[end+2:]
	} else if parts := strings.Split(spec, ":"); len(parts) == 3 {
		hostIP, spec = parts[0], parts[1]+":"+parts[2]
	}
	hp, gp, ok := strings.Cut(spec, ":")
	if !ok {
		return bad("give both the host and the guest port")
	}
	a, err := netip.ParseAddr(hostIP)
	if err != nil {
		return bad("host address " + strconv.Quote(hostIP) + " is not an IP address")
	}
	hostPort, err1 := parsePortNumber(hp)
	guestPort, err2 := parsePortNumber(gp)
	if err1 != nil || err2 != nil {
		return bad("ports are numbers from 1 to 65535")
	}
	return PortSpec{HostIP: a.Unmap().String(), HostPort: hostPort, GuestPort: guestPort, Proto: proto}, nil
}

func parsePortNumber(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 || s != strconv.Itoa(n) {
		return 0, fmt.Errorf("bad port %q", s)
	}
	return n, nil
}

// ParsePorts parses several specs and refuses two that listen on the same host port.
func ParsePorts(specs []string) ([]PortSpec, error) {
	var out []PortSpec
	seen := map[string]bool{}
	for _, s := range specs {
		p, err := ParsePort(s)
		if err != nil {
			return nil, err
		}
		key := fmt.Sprintf("%s/%d", p.Proto, p.HostPort)
		if seen[key] {
			return nil, fmt.Errorf("host port %d is published twice", p.HostPort)
		}
		seen[key] = true
		out = append(out, p)
	}
	return out, nil
}
