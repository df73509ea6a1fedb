package vm

import (
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
)

// Egress modes, as `--egress` takes them.
const (
	EgressAllow = "allow" // anything the network lets out (the default)
	EgressDeny  = "deny"  // nothing but DNS at the gateway
	EgressList  = "list"  // only the listed destinations, and DNS at the gateway
)

// Egress is a VM's outbound traffic policy.
type Egress struct {
	Mode  string   `json:"mode"`
	Allow []string `json:"allow,omitempty"` // host:port; names are resolved when the VM starts
}

var hostnameRE = regexp.MustCompile(`^(?i)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$`)

// ParseEgress parses allow, deny or allow=HOST:PORT[,HOST:PORT...].
func ParseEgress(s string) (Egress, error) {
	switch s {
	case "", EgressAllow:
		return Egress{Mode: EgressAllow}, nil
	case EgressDeny:
		return Egress{Mode: EgressDeny}, nil
	}
	list, ok := strings.CutPrefix(s, "allow=")
	if !ok || list == "" {
		return Egress{}, fmt.Errorf("--egress %q: use allow, deny, or allow=HOST:PORT[,HOST:PORT...]", s)
	}
	e := Egress{Mode: EgressList}
	for _, item := range strings.Split(list, ",") {
		host, port, err := net.SplitHostPort(strings.TrimSpace(item))
		if err != nil {
			return Egress{}, fmt.Errorf("--egress: %q is not HOST:PORT (e.g. 10.9.0.5:443 or db.internal:5432)", item)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port != strconv.Itoa(n) {
			return Egress{}, fmt.Errorf("--egress: port %q in %q is not 1-65535", port, item)
		}
		if ip := net.ParseIP(host); ip == nil {
			if !hostnameRE.MatchString(host) || len(host) > 253 {
				return Egress{}, fmt.Errorf("--egress: %q is neither an address nor a host name", host)
			}
		} else if ip.To4() == nil {
			return Egress{}, fmt.Errorf("--egress: %q: only IPv4 destinations are supported", host)
		}
		e.Allow = append(e.Allow, net.JoinHostPort(host, port))
	}
	return e, nil
}

// String renders the policy as --egress takes it.
func (e Egress) String() string {
	switch e.Mode {
	case EgressList:
		return "allow=" + strings.Join(e.Allow, ",")
	case "":
		return EgressAllow
	}
	return e.Mode
}
