package runtime

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/netsync"
	"github.com/mvm-dev/mvm/internal/network"
	"github.com/mvm-dev/mvm/internal/store"
	"github.com/mvm-dev/mvm/internal/vm"
)

// NetworkOptions describe a network to create.
type NetworkOptions struct {
	Name     string
	Subnet   string // CIDR; empty: the first free candidate
	NoNAT    bool
	Isolated bool
	DNS      []string // resolvers the gateway's DNS forwards to; empty: the host's
}

// NetworkInfo is a network with the VMs on it.
type NetworkInfo struct {
	store.Network
	VMs []string `json:"vms"`
}

func (r *Runtime) table() string { return network.TableFor(r.Root.Dir, layout.DefaultRoot) }

// bridgeName derives a network's bridge name from the root and the network name.
func (r *Runtime) bridgeName(name string) string {
	if name == vm.NetworkDefault {
		return network.BridgeFor(r.Root.Dir, layout.DefaultRoot)
	}
	return network.NamedBridge(r.Root.Dir, name)
}

// NetworkCreate creates a network: its record, bridge and rules.
func (r *Runtime) NetworkCreate(o NetworkOptions) (store.Network, error) {
	if err := vm.ValidateName(o.Name); err != nil {
		return store.Network{}, fmt.Errorf("network %w", err)
	}
	if o.Name == vm.NetworkNone {
		return store.Network{}, errors.New(`"none" means no network and cannot be created`)
	}
	var dns []netip.AddrPort
	for _, s := range o.DNS {
		ap, err := parseResolver(s)
		if err != nil {
			return store.Network{}, err
		}
		dns = append(dns, ap)
	}
	var subnet netip.Prefix
	if o.Subnet != "" {
		p, err := netip.ParsePrefix(o.Subnet)
		if err != nil || !p.Addr().Is4() || p.Bits() > 29 || p.Bits() < 8 {
			return store.Network{}, fmt.Errorf("--subnet %q: give an IPv4 CIDR from /8 to /29, e.g. 10.42.0.0/24", o.Subnet)
		}
		subnet = p.Masked()
	}
	if err := r.Root.EnsureDirs(); err != nil {
		return store.Network{}, err
	}
	bridge := r.bridgeName(o.Name)
	used, err := network.HostPrefixes(bridge)
	if err != nil {
		return store.Network{}, err
	}
	var n store.Network
	err = r.Store.Update(func(tx *store.Tx) error {
		if _, err := tx.Network(o.Name); err == nil {
			return fmt.Errorf("network %q already exists: see `mvmctl network ls`", o.Name)
		}
		nets, err := tx.Networks()
		if err != nil {
			return err
		}
		for _, other := range nets {
			used = append(used, other.Subnet)
		}
		if !subnet.IsValid() {
			if subnet, err = network.ChooseSubnet(network.NamedCandidates(), used); err != nil {
				return err
			}
		} else {
			for _, u := range used {
				if u.Overlaps(subnet) {
					return fmt.Errorf("--subnet %s overlaps %s, already used on this host: pick another", subnet, u)
				}
			}
		}
		n = store.Network{Name: o.Name, Bridge: bridge, Subnet: subnet, Gateway: subnet.Addr().Next(),
			NAT: !o.NoNAT, Isolated: o.Isolated, DNS: dns, Created: time.Now().UTC()}
		if err := tx.PutNetwork(n); err != nil {
			return err
		}
		if err := network.EnsureBridge(n.Bridge, netip.PrefixFrom(n.Gateway, n.Subnet.Bits())); err != nil {
			return err
		}
		return netsync.Sync(tx, r.table())
	})
	if err != nil {
		_ = network.DeleteLink(bridge)
	}
	return n, err
}

func parseResolver(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Addr().Is4() {
		return ap, nil
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
		return netip.AddrPortFrom(a, 53), nil
	}
	return netip.AddrPort{}, fmt.Errorf("--dns %q: give an IPv4 address, optionally with a port (10.0.0.53 or 10.0.0.53:5353)", s)
}

// NetworkRemove removes a network with its bridge and rules; it refuses while a VM uses it.
func (r *Runtime) NetworkRemove(name string) error {
	var bridge string
	err := r.Store.Update(func(tx *store.Tx) error {
		n, err := tx.Network(name)
		if err != nil {
			return fmt.Errorf("no network named %q: see `mvmctl network ls`", name)
		}
		vms, err := tx.VMs()
		if err != nil {
			return err
		}
		var users []string
		for _, v := range vms {
			if v.Spec.Network == name && v.State.Active() {
				users = append(users, v.Spec.Name)
			}
		}
		if len(users) > 0 {
			return fmt.Errorf("network %s is in use by %s: take them down first (`mvmctl down %s`)", name, strings.Join(users, ", "), strings.Join(users, " "))
		}
		bridge = n.Bridge
		if err := tx.DeleteNetwork(name); err != nil {
			return err
		}
		return netsync.Sync(tx, r.table())
	})
	if err != nil {
		return err
	}
	return network.DeleteLink(bridge)
}

// Networks lists the networks (creating the default one if this root has none yet).
func (r *Runtime) Networks() ([]NetworkInfo, error) {
	if err := r.EnsureDefaultNetwork(); err != nil {
		r.Log.Debug("default network", "err", err)
	}
	var out []NetworkInfo
	err := r.Store.View(func(tx *store.Tx) error {
		nets, err := tx.Networks()
		if err != nil {
			return err
		}
		vms, err := tx.VMs()
		if err != nil {
			return err
		}
		for _, n := range nets {
			info := NetworkInfo{Network: n, VMs: []string{}}
			for _, v := range vms {
				if v.Spec.Network == n.Name && v.State.Active() {
					info.VMs = append(info.VMs, v.Spec.Name)
				}
			}
			out = append(out, info)
		}
		return nil
	})
	return out, err
}

// EnsureDefaultNetwork creates the default network unless it exists.
func (r *Runtime) EnsureDefaultNetwork() error {
	var exists bool
	_ = r.Store.View(func(tx *store.Tx) error {
		_, err := tx.Network(vm.NetworkDefault)
		exists = err == nil
		return nil
	})
	if exists {
		return nil
	}
	bridge := r.bridgeName(vm.NetworkDefault)
	used, err := network.HostPrefixes(bridge)
	if err != nil {
		return err
	}
	return r.Store.Update(func(tx *store.Tx) error {
		_, err := ensureDefaultNetwork(tx, bridge, used, r.defaultSubnet())
		return err
	})
}

// defaultSubnet is the subnet set for the default network in the root's config file.
func (r *Runtime) defaultSubnet() netip.Prefix {
	cfg, err := layout.ReadConfig(r.Root)
	if err != nil || cfg.DefaultSubnet == "" {
		return netip.Prefix{}
	}
	p, err := netip.ParsePrefix(cfg.DefaultSubnet)
	if err != nil {
		r.Log.Warn("config: bad default_subnet; choosing one", "value", cfg.DefaultSubnet)
		return netip.Prefix{}
	}
	return p.Masked()
}
