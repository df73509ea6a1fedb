package network

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// FirewallNet is one network as the firewall sees it.
type FirewallNet struct {
	Bridge   string
	Subnet   netip.Prefix
	Gateway  netip.Addr
	NAT      bool
	Isolated bool
}

// Egress modes of a VM.
const (
	EgressAllow = "allow" // anything (subject to the network's NAT)
	EgressDeny  = "deny"  // nothing but the gateway's DNS
	EgressList  = "list"  // only the listed destinations (and the gateway's DNS)
)

// FirewallVM is one running VM's traffic rules.
type FirewallVM struct {
	ID     string
	TAP    string
	Bridge string
	IP     netip.Addr
	MAC    net.HardwareAddr
	Egress string
	Allow  []netip.AddrPort // with EgressList
}

// Firewall is everything mvm's rules are made from. The tables are rebuilt from it
// as a whole on each change, in one netlink transaction, so they always match the
// state (also after a crash: reconcile re-applies) and partial rule sets never exist.
type Firewall struct {
	Table    string // mvm's table name (in the inet and bridge families)
	Networks []FirewallNet
	VMs      []FirewallVM
}

// TableFor names mvm's nftables tables for an mvm root ("mvm" for the default root).
func TableFor(root, defaultRoot string) string {
	if root == defaultRoot {
		return "mvm"
	}
	return "mvm_" + BridgeFor(root, defaultRoot)[len("mvmbr"):]
}

var accept = nftables.ChainPolicyAccept

// Apply replaces mvm's tables with the rules for fw. Nothing outside these tables is
// touched.
//
// inet table:
//   - input: from a VM bridge only DNS and ICMP echo to the gateway, and replies;
//     everything else to the host's own services is dropped;
//   - forward: no routed traffic between two networks; none out of a network without
//     NAT; nothing new from outside into a network; per-VM egress policy;
//   - postrouting: masquerade for NAT networks.
//
// bridge table (traffic between VMs on one bridge): anti-spoofing (a VM can only send
// from its own MAC and address) and per-VM egress policy.
func (fw Firewall) Apply() error {
	c, err := nftables.New(nftables.WithSockOptions(bigReceiveBuffer))
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	inet := &nftables.Table{Name: fw.Table, Family: nftables.TableFamilyINet}
	br := &nftables.Table{Name: fw.Table, Family: nftables.TableFamilyBridge}
	for _, t := range []*nftables.Table{inet, br} {
		if existing, _ := c.ListTableOfFamily(t.Name, t.Family); existing != nil {
			c.DelTable(t)
		}
	}
	if len(fw.Networks) == 0 {
		return flush(c)
	}
	c.AddTable(inet)
	c.AddTable(br)
	input := c.AddChain(&nftables.Chain{Name: "input", Table: inet, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	forward := c.AddChain(&nftables.Chain{Name: "forward", Table: inet, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: inet, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	bfwd := c.AddChain(&nftables.Chain{Name: "forward", Table: br, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	rule := func(ch *nftables.Chain, exprs ...[]expr.Any) {
		var all []expr.Any
		for _, e := range exprs {
			all = append(all, e...)
		}
		c.AddRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: all})
	}

	// Per-VM egress chains first, so the forward chain can jump to them.
	vms := append([]FirewallVM(nil), fw.VMs...)
	sort.Slice(vms, func(i, j int) bool { return vms[i].ID < vms[j].ID })
	for _, vm := range vms {
		// Anti-spoofing on the bridge: whatever else holds, a VM speaks as itself.
		if len(vm.MAC) == 6 {
			rule(bfwd, iif(vm.TAP), etherSaddr(vm.MAC, expr.CmpOpNeq), verdict(expr.VerdictDrop))
		}
		if vm.IP.IsValid() {
			rule(bfwd, iif(vm.TAP), etherIPv4(), ipAddr(12, vm.IP, expr.CmpOpNeq), verdict(expr.VerdictDrop))
		}
		if vm.Egress == EgressAllow || vm.Egress == "" || !vm.IP.IsValid() {
			continue
		}
		ch := c.AddChain(&nftables.Chain{Name: "egress-" + vm.ID, Table: inet})
		bch := c.AddChain(&nftables.Chain{Name: "egress-" + vm.ID, Table: br})
		for _, ap := range vm.Allow {
			for _, proto := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
				rule(ch, ipv4(), ipAddr(16, ap.Addr(), expr.CmpOpEq), l4proto(proto), dport(ap.Port()), verdict(expr.VerdictAccept))
				rule(bch, etherIPv4(), ipAddr(16, ap.Addr(), expr.CmpOpEq), l4proto(proto), dport(ap.Port()), verdict(expr.VerdictAccept))
			}
		}
		rule(ch, verdict(expr.VerdictDrop))
		rule(bch, etherIPv4(), verdict(expr.VerdictDrop)) // ARP stays possible
		rule(forward, iif(vm.Bridge), ipv4(), ipAddr(12, vm.IP, expr.CmpOpEq), jump("egress-"+vm.ID))
		rule(bfwd, iif(vm.TAP), jump("egress-"+vm.ID))
	}

	nets := append([]FirewallNet(nil), fw.Networks...)
	sort.Slice(nets, func(i, j int) bool { return nets[i].Bridge < nets[j].Bridge })
	for _, n := range nets {
		// The host's own services: only what mvm provides (DNS on the gateway).
		rule(input, iif(n.Bridge), ctEstablished(), verdict(expr.VerdictAccept))
		if n.Gateway.IsValid() {
			for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
				rule(input, iif(n.Bridge), ipv4(), ipAddr(16, n.Gateway, expr.CmpOpEq), l4proto(proto), dport(53), verdict(expr.VerdictAccept))
			}
			rule(input, iif(n.Bridge), ipv4(), ipAddr(16, n.Gateway, expr.CmpOpEq), l4proto(unix.IPPROTO_ICMP), icmpType(8), verdict(expr.VerdictAccept))
		}
		rule(input, iif(n.Bridge), verdict(expr.VerdictDrop))

		// Routed traffic: never between networks; out only with NAT; in only as replies.
		for _, other := range nets {
			if other.Bridge != n.Bridge {
				rule(forward, iif(n.Bridge), oif(other.Bridge), verdict(expr.VerdictDrop))
			}
		}
		if !n.NAT {
			rule(forward, iif(n.Bridge), oifNot(n.Bridge), verdict(expr.VerdictDrop))
		}
		rule(forward, oif(n.Bridge), iifNot(n.Bridge), ctEstablished(), verdict(expr.VerdictAccept))
		rule(forward, oif(n.Bridge), iifNot(n.Bridge), verdict(expr.VerdictDrop))
		if n.NAT {
			rule(post, ipv4(), ipSubnet(12, n.Subnet), oifNot(n.Bridge), []expr.Any{&expr.Masq{}})
		}
	}
	return flush(c)
}

// Remove deletes mvm's tables, if they exist.
func RemoveFirewall(table string) error {
	return Firewall{Table: table}.Apply()
}

// bigReceiveBuffer makes room for the kernel's acknowledgements of a whole rule set
// sent as one transaction (one per rule): with many VMs the default buffer overflows
// (ENOBUFS). FORCE, since mvm runs as root, so rmem_max does not cap it.
func bigReceiveBuffer(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
	})
	if err != nil {
		return err
	}
	return serr
}

func flush(c *nftables.Conn) error {
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: apply mvm's rules: %w", err)
	}
	return nil
}

// Expression helpers: each returns the expressions of one match or action.

func ifname(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}

func iif(n string) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(n)}}
}

func iifNot(n string) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(n)}}
}

func oif(n string) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(n)}}
}

func oifNot(n string) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(n)}}
}

// ipv4 matches IPv4 packets in the inet family.
func ipv4() []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}}}
}

// etherIPv4 matches IPv4 frames in the bridge family.
func etherIPv4() []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, unix.ETH_P_IP)}}
}

// ipAddr compares the IPv4 source (offset 12) or destination (16) address.
func ipAddr(offset uint32, a netip.Addr, op expr.CmpOp) []expr.Any {
	b := a.As4()
	return []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Cmp{Op: op, Register: 1, Data: b[:]}}
}

func ipSubnet(offset uint32, p netip.Prefix) []expr.Any {
	mask := net.CIDRMask(p.Bits(), 32)
	addr := p.Masked().Addr().As4()
	return []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:]}}
}

func etherSaddr(mac net.HardwareAddr, op expr.CmpOp) []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
		&expr.Cmp{Op: op, Register: 1, Data: []byte(mac)}}
}

func l4proto(p byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}}}
}

func dport(p uint16) []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, p)}}
}

func icmpType(t byte) []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{t}}}
}

func ctEstablished() []expr.Any {
	mask := binary.NativeEndian.AppendUint32(nil, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
	return []expr.Any{&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)}}
}

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

func jump(chain string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
}
