// Package netsync makes the host's network plumbing match the state store: mvm's
// nftables tables and the IP forwarding switch. It is called, inside the store's write
// transaction, after every change to networks or running VMs, and by reconcile, so the
// rules are never out of step with the VMs that exist (also after a crash).
package netsync

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/mvm-dev/mvm/internal/network"
	"github.com/mvm-dev/mvm/internal/store"
	"github.com/mvm-dev/mvm/internal/vm"
)

// ipForwardPath is the switch for routing IPv4 (per network namespace).
const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// metaForwardSaved remembers the switch's value before mvm first turned it on.
const metaForwardSaved = "ip_forward_before_mvm"

// Sync rebuilds mvm's firewall tables from tx and sets IP forwarding: on while a NAT
// network exists, back to what it was once the last one is gone.
func Sync(tx *store.Tx, table string) error {
	nets, err := tx.Networks()
	if err != nil {
		return err
	}
	vms, err := tx.VMs()
	if err != nil {
		return err
	}
	fw := network.Firewall{Table: table}
	byName := map[string]store.Network{}
	nat := false
	for _, n := range nets {
		byName[n.Name] = n
		fw.Networks = append(fw.Networks, network.FirewallNet{Bridge: n.Bridge, Subnet: n.Subnet, Gateway: n.Gateway,
			NAT: n.NAT, Isolated: n.Isolated})
		nat = nat || n.NAT
	}
	for _, r := range vms {
		if !r.State.HasProcess() || r.Spec.Network == vm.NetworkNone || r.TAP == "" {
			continue
		}
		n, ok := byName[r.Spec.Network]
		if !ok {
			continue
		}
		fv := network.FirewallVM{ID: r.ID, TAP: r.TAP, Bridge: n.Bridge}
		if p, err := netip.ParsePrefix(r.IP); err == nil {
			fv.IP = p.Addr()
		}
		if mac, err := net.ParseMAC(r.MAC); err == nil {
			fv.MAC = mac
		}
		switch r.Spec.Egress.Mode {
		case vm.EgressDeny:
			fv.Egress = network.EgressDeny
		case vm.EgressList:
			fv.Egress = network.EgressList
			for _, s := range r.EgressResolved {
				if ap, err := netip.ParseAddrPort(s); err == nil {
					fv.Allow = append(fv.Allow, ap)
				}
			}
		default:
			fv.Egress = network.EgressAllow
		}
		fw.VMs = append(fw.VMs, fv)
	}
	if err := fw.Apply(); err != nil {
		return err
	}
	return syncForwarding(tx, nat)
}

func syncForwarding(tx *store.Tx, want bool) error {
	saved := tx.Meta(metaForwardSaved)
	switch {
	case want && saved == "":
		cur, err := os.ReadFile(ipForwardPath)
		if err != nil {
			return fmt.Errorf("read %s: %w", ipForwardPath, err)
		}
		if err := tx.SetMeta(metaForwardSaved, strings.TrimSpace(string(cur))); err != nil {
			return err
		}
		return writeForward("1")
	case want:
		return writeForward("1") // still on, even if something turned it off
	case saved != "":
		if err := writeForward(saved); err != nil {
			return err
		}
		return tx.SetMeta(metaForwardSaved, "")
	}
	return nil
}

func writeForward(v string) error {
	cur, err := os.ReadFile(ipForwardPath)
	if err == nil && strings.TrimSpace(string(cur)) == v {
		return nil
	}
	if err := os.WriteFile(ipForwardPath, []byte(v+"\n"), 0o644); err != nil {
		return fmt.Errorf("set %s to %s: %w", ipForwardPath, v, err)
	}
	return nil
}
