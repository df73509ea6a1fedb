package bench

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"time"

	"github.com/vishvananda/netns"

	"github.com/mvm-dev/mvm/internal/network"
)

// NetworkReport compares mvm's per-VM host network setup with the same TAP and bridge
// port made with ip(8).
type NetworkReport struct {
	VMs              int     `json:"vms"`
	SetupP50         float64 `json:"mvm_setup_p50_ms"`
	SetupP99         float64 `json:"mvm_setup_p99_ms"`
	TeardownP50      float64 `json:"mvm_teardown_p50_ms"`
	TeardownP99      float64 `json:"mvm_teardown_p99_ms"`
	IPSetupP50       float64 `json:"ip_setup_p50_ms"`
	IPSetupP99       float64 `json:"ip_setup_p99_ms"`
	IPTeardownP50    float64 `json:"ip_teardown_p50_ms"`
	IPTeardownP99    float64 `json:"ip_teardown_p99_ms"`
	TAPP50           float64 `json:"mvm_tap_only_p50_ms"`
	RulesP50         float64 `json:"mvm_rules_only_p50_ms"`
	SetupRatioP50    float64 `json:"setup_ratio_p50"`
	TeardownRatioP50 float64 `json:"teardown_ratio_p50"`
}

// Network measures, in a network namespace of its own, n VMs' worth of host network
// setup the way the supervisor does it (a non-persistent TAP on the bridge, up, and
// the firewall rebuilt with the VM's rules) and teardown (the TAP released, the rules
// rebuilt without it), against `ip tuntap add` + `ip link set master` + `ip link set up`
// and `ip link del` for the same TAP and bridge port.
func Network(n int) (NetworkReport, error) {
	rep := NetworkReport{VMs: n}
	runtime.LockOSThread() // namespaces belong to threads; this one never leaves
	orig, err := netns.Get()
	if err != nil {
		return rep, err
	}
	ns, err := netns.New()
	if err != nil {
		return rep, fmt.Errorf("new network namespace: %w", err)
	}
	defer func() {
		_ = netns.Set(orig)
		ns.Close()
		orig.Close()
		runtime.UnlockOSThread()
	}()
	const bridge = "mvbench0"
	gw := netip.MustParsePrefix("10.77.0.1/16")
	if err := network.EnsureBridge(bridge, gw); err != nil {
		return rep, err
	}
	fw := network.Firewall{Table: "mvmbench", Networks: []network.FirewallNet{{Bridge: bridge, Subnet: gw.Masked(), Gateway: gw.Addr(), NAT: true}}}
	var setup, teardown, ipSetup, ipTeardown, tapOnly, rulesOnly []time.Duration
	taps := map[string]*network.TAP{}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("mvtb%d", i)
		ip := netip.AddrFrom4([4]byte{10, 77, byte(1 + i/250), byte(2 + i%250)})
		st := time.Now()
		tap, err := network.CreateTAP(name, bridge)
		if err != nil {
			return rep, err
		}
		tapOnly = append(tapOnly, time.Since(st))
		mac, _ := net.ParseMAC(network.MACFor(ip))
		fw.VMs = append(fw.VMs, network.FirewallVM{ID: fmt.Sprint(i), TAP: name, Bridge: bridge, IP: ip, MAC: mac, Egress: network.EgressDeny})
		rst := time.Now()
		if err := fw.Apply(); err != nil {
			return rep, err
		}
		rulesOnly = append(rulesOnly, time.Since(rst))
		setup = append(setup, time.Since(st))
		taps[name] = tap
	}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("mvtb%d", i)
		st := time.Now()
		taps[name].Close()
		fw.VMs = fw.VMs[1:]
		if err := fw.Apply(); err != nil {
			return rep, err
		}
		teardown = append(teardown, time.Since(st))
	}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("iptb%d", i)
		st := time.Now()
		for _, args := range [][]string{{"tuntap", "add", "dev", name, "mode", "tap"}, {"link", "set", name, "master", bridge}, {"link", "set", name, "up"}} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				return rep, fmt.Errorf("ip %v: %v: %s", args, err, out)
			}
		}
		ipSetup = append(ipSetup, time.Since(st))
	}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("iptb%d", i)
		st := time.Now()
		if out, err := exec.Command("ip", "link", "del", name).CombinedOutput(); err != nil {
			return rep, fmt.Errorf("ip link del: %v: %s", err, out)
		}
		ipTeardown = append(ipTeardown, time.Since(st))
	}
	pct := func(d []time.Duration) (float64, float64) {
		l := latency("", d)
		return l.P50, l.P99
	}
	rep.SetupP50, rep.SetupP99 = pct(setup)
	rep.TeardownP50, rep.TeardownP99 = pct(teardown)
	rep.IPSetupP50, rep.IPSetupP99 = pct(ipSetup)
	rep.IPTeardownP50, rep.IPTeardownP99 = pct(ipTeardown)
	rep.TAPP50, _ = pct(tapOnly)
	rep.RulesP50, _ = pct(rulesOnly)
	rep.SetupRatioP50 = rep.SetupP50 / rep.IPSetupP50
	rep.TeardownRatioP50 = rep.TeardownP50 / rep.IPTeardownP50
	return rep, nil
}
