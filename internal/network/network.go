// Package network does the host side of VM networking: the bridge a network lives on,
// one TAP per VM, subnet choice and MAC derivation. It talks netlink directly rather
// than running ip(8).
package network

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultBridge is the default network's bridge for the default mvm root.
const DefaultBridge = "mvmbr0"

// BridgeFor names the default network's bridge of an mvm root: mvmbr0 for the
// default root, and a name derived from the path for any other, so two roots on one
// host never share a bridge (and their address allocations never collide).
func BridgeFor(root, defaultRoot string) string {
	if root == defaultRoot {
		return DefaultBridge
	}
	sum := sha256.Sum256([]byte(root))
	return "mvmbr" + hex.EncodeToString(sum[:4]) // 13 characters: within IFNAMSIZ
}

// DefaultCandidates are the subnets tried, in order, for the default network; the
// first that overlaps no route or address of this host wins.
var DefaultCandidates = []string{
	"172.30.77.0/24", "172.30.78.0/24", "172.31.77.0/24", "10.213.77.0/24", "10.214.77.0/24", "192.168.213.0/24",
}

// NamedBridge names a named network's bridge: "mvn" and 8 hex digits of a hash of the
// root and the name, so names of any length fit IFNAMSIZ and roots never share one.
func NamedBridge(root, name string) string {
	sum := sha256.Sum256([]byte(root + "\x00" + name))
	return "mvn" + hex.EncodeToString(sum[:4])
}

// NamedCandidates are the subnets tried for a named network without --subnet.
func NamedCandidates() []string {
	var out []string
	for i := 0; i < 200; i++ {
		out = append(out, fmt.Sprintf("10.%d.%d.0/24", 140+i/100, i%100))
	}
	return out
}

// ChooseSubnet picks the first candidate that overlaps none of the host's prefixes.
func ChooseSubnet(candidates []string, used []netip.Prefix) (netip.Prefix, error) {
	for _, c := range candidates {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return netip.Prefix{}, err
		}
		clash := false
		for _, u := range used {
			if u.Overlaps(p) {
				clash = true
				break
			}
		}
		if !clash {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("every candidate subnet for the default network overlaps a route of this host: %v", candidates)
}

// HostPrefixes lists the IPv4 prefixes this host already uses: routes (all tables)
// and interface addresses, skipping default routes and our own bridge.
func HostPrefixes(ownBridge string) ([]netip.Prefix, error) {
	own := -1
	if l, err := netlink.LinkByName(ownBridge); err == nil {
		own = l.Attrs().Index
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var out []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil || r.LinkIndex == own {
			continue
		}
		if p, ok := toPrefix(r.Dst); ok && p.Bits() > 0 {
			out = append(out, p)
		}
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if a.LinkIndex == own {
			continue
		}
		if p, ok := toPrefix(a.IPNet); ok {
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

func toPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// MACFor derives a VM's MAC from its IPv4 address: locally administered, unicast,
// 02:00 followed by the four address bytes, so it is stable and unique per address.
func MACFor(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("02:00:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

// EnsureBridge creates the bridge if needed, gives it the gateway address and brings
// it up. It is idempotent.
func EnsureBridge(name string, gateway netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf):
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		if l, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("bridge %s: %w", name, err)
		}
	case err != nil:
		return fmt.Errorf("bridge %s: %w", name, err)
	}
	if l.Type() != "bridge" {
		return fmt.Errorf("%s exists but is a %s, not a bridge: remove it or pick another network", name, l.Type())
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: gateway.Addr().AsSlice(), Mask: net.CIDRMask(gateway.Bits(), 32)}}
	if err := netlink.AddrReplace(l, addr); err != nil {
		return fmt.Errorf("address %s on %s: %w", gateway, name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up %s: %w", name, err)
	}
	return nil
}

// TAP is a VM's TAP device. A TAP made by CreateTAP is non-persistent: the kernel
// removes it when the last file descriptor closes, so a VM whose supervisor and
// hypervisor die leaves no TAP. One made by CreatePersistentTAP has no File and
// stays until Close (or mvm's cleanup of a dead VM) deletes it.
type TAP struct {
	Name string
	File *os.File // pass to the hypervisor; nil for a persistent TAP
}

// CreateTAP creates a TAP attached to bridge and up.
func CreateTAP(name, bridge string) (*TAP, error) {
	return createTAP(name, bridge, false, 0)
}

// CreatePersistentTAP creates a TAP attached to bridge and up, for a hypervisor
// that opens it by name itself (Firecracker). The descriptor that made it is
// closed at once: a single-queue TAP admits one open descriptor, the
// hypervisor's. A persistent TAP outlives a crash of everything using it, which
// is why mvm's cleanup of a dead VM deletes its TAP by name. owner is the uid
// and gid the hypervisor opens it as: the kernel lets no one else without
// CAP_NET_ADMIN attach to it (a jailed Firecracker runs as a uid of its own).
func CreatePersistentTAP(name, bridge string, owner uint32) (*TAP, error) {
	t, err := createTAP(name, bridge, true, owner)
	if err != nil {
		return nil, err
	}
	t.File.Close()
	t.File = nil
	return t, nil
}

func createTAP(name, bridge string, persist bool, owner uint32) (*TAP, error) {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", bridge, err)
	}
	t := &netlink.Tuntap{
		LinkAttrs:  netlink.LinkAttrs{Name: name, MasterIndex: br.Attrs().Index},
		Mode:       netlink.TUNTAP_MODE_TAP,
		Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
		Queues:     1,
		NonPersist: !persist,
		Owner:      owner,
		Group:      owner,
	}
	if err := netlink.LinkAdd(t); err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("create TAP %s: %w (run as root, or use --network none)", name, err)
		}
		return nil, fmt.Errorf("create TAP %s: %w", name, err)
	}
	if len(t.Fds) != 1 {
		return nil, fmt.Errorf("create TAP %s: got %d queues", name, len(t.Fds))
	}
	l, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetUp(l)
	}
	if err != nil {
		t.Fds[0].Close()
		if persist {
			_ = DeleteLink(name)
		}
		return nil, fmt.Errorf("bring up TAP %s: %w", name, err)
	}
	return &TAP{Name: name, File: t.Fds[0]}, nil
}

// Close releases the TAP: the kernel deletes a non-persistent one once the
// hypervisor's copy closes too; a persistent one is deleted here.
func (t *TAP) Close() error {
	if t.File == nil {
		return DeleteLink(t.Name)
	}
	return t.File.Close()
}

// LinkExists reports whether a network interface exists.
func LinkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// DeleteLink removes an interface if it exists (reconcile uses it for stray TAPs).
func DeleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil
	}
	return netlink.LinkDel(l)
}

// IsolatePort sets a bridge port's isolated flag: isolated ports reach only
// non-isolated ones (the bridge itself, i.e. the gateway), never each other.
func IsolatePort(name string) error {
	l, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetIsolated(l, true)
	}
	if err != nil {
		return fmt.Errorf("isolate bridge port %s: %w", name, err)
	}
	return nil
}
