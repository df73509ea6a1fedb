package guest

import (
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
)

// configureNetwork brings up lo and, when the host gave an address, eth0 with it and a
// default route through the gateway. No DHCP: the address is known before boot.
func configureNetwork(nc NetConfig, have bool) error {
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("lo: %w", err)
	}
	if !have {
		return nil
	}
	eth, err := netlink.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("eth0 not found (mvm.ip given but no NIC attached?): %w", err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: nc.Addr.Addr().AsSlice(), Mask: net.CIDRMask(nc.Addr.Bits(), 32)}}
	if err := netlink.AddrReplace(eth, addr); err != nil {
		return fmt.Errorf("eth0 address %s: %w", nc.Addr, err)
	}
	if err := netlink.LinkSetUp(eth); err != nil {
		return fmt.Errorf("eth0 up: %w", err)
	}
	if nc.Gateway.IsValid() {
		r := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: nc.Gateway.AsSlice()}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("default route via %s: %w", nc.Gateway, err)
		}
	}
	return nil
}

// writeResolvConf writes DNS settings: the config drive's resolv.conf if it has one,
// else the gateway, as the guest contract says.
func writeResolvConf(configDir string, nc NetConfig, have bool) error {
	if b, err := os.ReadFile(configDir + "/resolv.conf"); err == nil {
		return os.WriteFile("/etc/resolv.conf", b, 0o644)
	}
	if !have || !nc.Gateway.IsValid() {
		return nil
	}
	return os.WriteFile("/etc/resolv.conf", []byte("nameserver "+nc.Gateway.String()+"\n"), 0o644)
}

func writeHosts(hostname string, nc NetConfig, have bool) error {
	var sb strings.Builder
	sb.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
	if have {
		fmt.Fprintf(&sb, "%s\t%s\n", nc.Addr.Addr(), hostname)
	} else {
		fmt.Fprintf(&sb, "127.0.1.1\t%s\n", hostname)
	}
	return os.WriteFile("/etc/hosts", []byte(sb.String()), 0o644)
}
