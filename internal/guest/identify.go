package guest

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mvm-dev/mvm/internal/agent/proto"
)

// VMConfig is the config drive's vm.json as the guest reads it.
type VMConfig struct {
	Name     string `json:"name"`
	ID       string `json:"id"`
	Hostname string `json:"hostname"`
	IP       string `json:"ip"`
	Gateway  string `json:"gateway"`
	MAC      string `json:"mac"`
}

// maxVMConfig bounds vm.json: it holds a few short fields.
const maxVMConfig = 64 << 10

// ParseVMConfig reads vm.json and checks what the guest acts on.
func ParseVMConfig(raw []byte) (VMConfig, *NetConfig, net.HardwareAddr, error) {
	var c VMConfig
	if len(raw) > maxVMConfig {
		return c, nil, nil, errors.New("vm.json is too large")
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return c, nil, nil, fmt.Errorf("vm.json: %w", err)
	}
	if c.Hostname == "" || len(c.Hostname) > 64 {
		return c, nil, nil, errors.New("vm.json: hostname missing or longer than 64 bytes")
	}
	var mac net.HardwareAddr
	if c.MAC != "" {
		m, err := net.ParseMAC(c.MAC)
		if err != nil || len(m) != 6 {
			return c, nil, nil, fmt.Errorf("vm.json: mac %q is not an Ethernet address", c.MAC)
		}
		mac = m
	}
	if c.IP == "" {
		return c, nil, mac, nil
	}
	nc, err := ParseNet(c.IP, c.Gateway)
	if err != nil {
		return c, nil, nil, fmt.Errorf("vm.json: %w", err)
	}
	return c, &nc, mac, nil
}

// Identify implements server.Guest. The order matters: the clock and the random
// state first (nothing after may draw from the template's stream), then the drives
// the identity is read from, then hostname and network.
func (a *agentGuest) Identify(req proto.Identify) ([]byte, map[string]float64, error) {
	steps := map[string]float64{}
	t := time.Now()
	mark := func(name string) {
		steps[name] = float64(time.Since(t).Microseconds()) / 1000
		t = time.Now()
	}
	if err := a.SetTime(req.UnixNano); err != nil {
		return nil, steps, err
	}
	mark("clock")
	if err := reseed(req.Entropy); err != nil {
		return nil, steps, err
	}
	mark("reseed")
	// Both at once: each waits on its device's reads, which the host serves
	// meanwhile.
	labels := []string{LabelConfig, LabelSecrets}
	errs := make([]error, len(labels))
	var wg sync.WaitGroup
	for i, label := range labels {
		dev, ok := a.drives[label]
		if !ok {
			return nil, steps, fmt.Errorf("drive %s was not mounted at boot", label)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = remountDrive(label, dev)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, steps, err
	}
	mark("drives")
	raw, err := os.ReadFile("/mnt/config/vm.json")
	if err != nil {
		return nil, steps, err
	}
	cfg, nc, mac, err := ParseVMConfig(raw)
	if err != nil {
		return nil, steps, err
	}
	if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
		return nil, steps, fmt.Errorf("hostname: %w", err)
	}
	mark("hostname")
	if nc != nil {
		if err := reconfigureNetwork(*nc, mac); err != nil {
			return nil, steps, err
		}
	}
	have := nc != nil
	var ncv NetConfig
	if have {
		ncv = *nc
	}
	if err := writeResolvConf("/mnt/config", ncv, have); err != nil {
		return nil, steps, err
	}
	if err := writeHosts(cfg.Hostname, ncv, have); err != nil {
		return nil, steps, err
	}
	mark("network")
	if err := a.loadToken(); err != nil {
		return nil, steps, err
	}
	// Logged beside the answer, not before it: the serial console is slow to write.
	go a.log.Info("identity taken after restore", "hostname", cfg.Hostname, "ip", cfg.IP, "steps_ms", maps.Clone(steps))
	return a.token, steps, nil
}

// reseed mixes the host's entropy into the kernel's pool and forces the CRNG to
// reseed from it. Writing to /dev/urandom, or crediting entropy, alone leaves every
// clone of a snapshot drawing the same stream for up to a minute (measured).
func reseed(entropy []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+len(entropy)+3)
	binary.NativeEndian.PutUint32(buf[0:], uint32(len(entropy)*8))
	binary.NativeEndian.PutUint32(buf[4:], uint32(len(entropy)))
	copy(buf[8:], entropy)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
		return fmt.Errorf("add entropy: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("reseed: %w", e)
	}
	return nil
}

// reconfigureNetwork moves eth0 to a new MAC and address. The link goes down and up
// around the MAC change so the IPv6 link-local is derived from the new MAC too.
func reconfigureNetwork(nc NetConfig, mac net.HardwareAddr) error {
	eth, err := netlink.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("eth0: %w", err)
	}
	if err := netlink.LinkSetDown(eth); err != nil {
		return fmt.Errorf("eth0 down: %w", err)
	}
	if mac != nil {
		if err := netlink.LinkSetHardwareAddr(eth, mac); err != nil {
			return fmt.Errorf("eth0 mac %s: %w", mac, err)
		}
	}
	addrs, err := netlink.AddrList(eth, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("eth0 addresses: %w", err)
	}
	for _, ad := range addrs {
		if p, ok := netip.AddrFromSlice(ad.IP); ok && p.Unmap() != nc.Addr.Addr() {
			_ = netlink.AddrDel(eth, &ad)
		}
	}
	if err := configureNetwork(nc, true); err != nil {
		return err
	}
	neighs, _ := netlink.NeighList(eth.Attrs().Index, netlink.FAMILY_V4)
	for _, n := range neighs {
		_ = netlink.NeighDel(&n)
	}
	return nil
}
