package supervisor

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/mvm-dev/mvm/internal/dnsfwd"
	"github.com/mvm-dev/mvm/internal/layout"
	"github.com/mvm-dev/mvm/internal/netsync"
	"github.com/mvm-dev/mvm/internal/network"
	"github.com/mvm-dev/mvm/internal/store"
	"github.com/mvm-dev/mvm/internal/vm"
)

// hostResolvConf is where the host's resolvers are read from.
const hostResolvConf = "/etc/resolv.conf"

// setupNetwork plumbs the VM into its network before the guest boots: the bridge, the
// VM's TAP (a bridge port, isolated from its peers on an --isolated network), the
// egress list resolved to addresses, the firewall rules that include this VM, and the
// DNS service on the gateway.
func (s *supervisor) setupNetwork(ctx context.Context) error {
	var n store.Network
	if err := s.st.View(func(tx *store.Tx) error {
		var err error
		n, err = tx.Network(s.rec.Spec.Network)
		return err
	}); err != nil {
		return fmt.Errorf("network %s: %w", s.rec.Spec.Network, err)
	}
	if err := network.EnsureBridge(n.Bridge, netip.PrefixFrom(n.Gateway, n.Subnet.Bits())); err != nil {
		return err
	}
	upstreams := n.DNS
	if len(upstreams) == 0 {
		upstreams = dnsfwd.HostResolvers(hostResolvConf)
	}
	resolved, err := resolveEgress(ctx, s.rec.Spec.Egress, upstreams)
	if err != nil {
		return err
	}
	if s.onFirecracker() {
		// Firecracker opens it by name, as the jail's uid when jailed.
		s.tap, err = network.CreatePersistentTAP(s.rec.TAP, n.Bridge, uint32(s.rec.JailUID))
	} else {
		s.tap, err = network.CreateTAP(s.rec.TAP, n.Bridge)
	}
	if err != nil {
		return err
	}
	if n.Isolated {
		if err := network.IsolatePort(s.rec.TAP); err != nil {
			return err
		}
	}
	table := network.TableFor(s.o.Root.Dir, layout.DefaultRoot)
	err = s.st.Update(func(tx *store.Tx) error {
		r, err := tx.VM(s.o.Name)
		if err != nil {
			return err
		}
		r.EgressResolved = resolved
		s.rec = r
		if err := tx.PutVM(r); err != nil {
			return err
		}
		return netsync.Sync(tx, table)
	})
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	if f, err := dnsfwd.Listen(ctx, n.Gateway, upstreams, s.o.Log); err != nil {
		s.o.Log.Warn("no DNS service on the gateway", "err", err)
	} else {
		s.dns = f
		go f.Serve()
	}
	return nil
}

// resolveEgress turns an allow-list into addresses, resolving names now (with the
// network's resolvers) so the rules can name them.
func resolveEgress(ctx context.Context, e vm.Egress, resolvers []netip.AddrPort) ([]string, error) {
	if e.Mode != vm.EgressList {
		return nil, nil
	}
	r := &net.Resolver{PreferGo: true}
	if len(resolvers) > 0 {
		r.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, resolvers[0].String())
		}
	}
	var out []string
	for _, hp := range e.Allow {
		host, port, _ := net.SplitHostPort(hp)
		if a, err := netip.ParseAddr(host); err == nil {
			out = append(out, net.JoinHostPort(a.String(), port))
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		addrs, err := r.LookupNetIP(rctx, "ip4", host)
		cancel()
		if err != nil || len(addrs) == 0 {
			return nil, fmt.Errorf("--egress: cannot resolve %s (%v): fix the name, or give an address", host, err)
		}
		for _, a := range addrs {
			out = append(out, net.JoinHostPort(a.Unmap().String(), port))
		}
	}
	return out, nil
}
