package server

import (
	"bufio"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/mvm-dev/mvm/internal/agent/proto"
)

// details adds what `mvmctl inspect` shows to the basic agent info: addresses,
// mounts, load, memory and the process count, all read from /proc and the kernel.
func details(info *proto.AgentInfo) {
	if ifs, err := net.Interfaces(); err == nil {
		for _, ifc := range ifs {
			if ifc.Flags&net.FlagLoopback != 0 {
				continue
			}
			addrs, _ := ifc.Addrs()
			for _, a := range addrs {
				info.Addresses = append(info.Addresses, ifc.Name+" "+a.String())
			}
		}
	}
	if b, err := os.ReadFile("/proc/mounts"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 4 {
				info.Mounts = append(info.Mounts, proto.Mount{Source: f[0], Target: f[1], FSType: f[2], Options: f[3]})
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		for i := 0; i < 3 && i < len(f); i++ {
			v, _ := strconv.ParseFloat(f[i], 64)
			info.Load = append(info.Load, v)
		}
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), ":")
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			switch k {
			case "MemTotal":
				info.MemTotalKiB = n
			case "MemAvailable":
				info.MemAvailKiB = n
			}
		}
		f.Close()
	}
	if entries, err := os.ReadDir("/proc"); err == nil {
		for _, e := range entries {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				info.Processes++
			}
		}
	}
}
