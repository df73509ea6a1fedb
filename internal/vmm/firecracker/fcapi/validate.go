package fcapi

import (
	"fmt"
	"slices"
	"strings"
)

// ValidationError is a request the client refused to send.
type ValidationError struct {
	Method, Path string
	Field        string
	Reason       string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("fcapi: %s %s: invalid %s: %s", e.Method, e.Path, e.Field, e.Reason)
}

// checker collects the first problem of a request body.
type checker struct {
	method, path string
	err          *ValidationError
}

func (c *checker) fail(field, format string, args ...any) {
	if c.err == nil {
		c.err = &ValidationError{Method: c.method, Path: c.path, Field: field, Reason: fmt.Sprintf(format, args...)}
	}
}

func (c *checker) required(field, v string) {
	if v == "" {
		c.fail(field, "must not be empty")
	}
}

func (c *checker) oneOf(field, v string, allowed ...string) {
	if v != "" && !slices.Contains(allowed, v) {
		c.fail(field, "%q is not one of %s", v, strings.Join(allowed, ", "))
	}
}

// id checks a resource id as Firecracker does (alphanumerics and '_'), but
// ASCII only: a non-ASCII id would be percent-encoded in the URL path and
// then no longer match the id in the body.
func (c *checker) id(field, v string) {
	if v == "" {
		c.fail(field, "must not be empty")
		return
	}
	for _, r := range v {
		if r != '_' && (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') && (r < '0' || r > '9') {
			c.fail(field, "%q may hold only ASCII letters, digits and '_'", v)
			return
		}
	}
}

func (c *checker) rateLimiter(field string, rl *RateLimiter) {
	if rl == nil {
		return
	}
	for i, b := range []*TokenBucket{rl.Bandwidth, rl.Ops} {
		if b != nil && (b.Size < 0 || b.RefillTime < 0 || b.OneTimeBurst < 0) {
			c.fail(field+"."+[]string{"bandwidth", "ops"}[i], "size, one_time_burst and refill_time must not be negative")
		}
	}
}

func (c *checker) result() error {
	if c.err == nil {
		return nil
	}
	return c.err
}

func (b BootSource) check(c *checker) {
	c.required("kernel_image_path", b.KernelImagePath)
}

func (m MachineConfig) check(c *checker) {
	switch {
	case m.VCPUCount < 1 || m.VCPUCount > 32:
		c.fail("vcpu_count", "must be in 1..32, got %d", m.VCPUCount)
	case m.SMT && m.VCPUCount > 1 && m.VCPUCount%2 != 0:
		c.fail("vcpu_count", "must be 1 or even with smt, got %d", m.VCPUCount)
	}
	if m.MemSizeMiB <= 0 {
		c.fail("mem_size_mib", "must be > 0, got %d", m.MemSizeMiB)
	}
	c.oneOf("huge_pages", m.HugePages, HugePagesNone, HugePages2M)
	if m.HugePages == HugePages2M && m.MemSizeMiB%2 != 0 {
		c.fail("mem_size_mib", "must be a multiple of 2 with 2M huge pages, got %d", m.MemSizeMiB)
	}
	c.oneOf("cpu_template", m.CPUTemplate, "C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None")
}

func (d Drive) check(c *checker) {
	c.id("drive_id", d.DriveID)
	switch {
	case d.PathOnHost == "" && d.Socket == "":
		c.fail("path_on_host", "must be set (or socket, for vhost-user-block)")
	case d.PathOnHost != "" && d.Socket != "":
		c.fail("socket", "must not be set together with path_on_host")
	}
	if d.Socket != "" && (d.IsReadOnly || d.IOEngine != "" || d.RateLimiter != nil) {
		c.fail("socket", "a vhost-user-block drive takes no is_read_only, io_engine or rate_limiter")
	}
	c.oneOf("cache_type", d.CacheType, CacheUnsafe, CacheWriteback)
	c.oneOf("io_engine", d.IOEngine, IOEngineSync, IOEngineAsync)
	c.rateLimiter("rate_limiter", d.RateLimiter)
}

func (n NetworkInterface) check(c *checker) {
	c.id("iface_id", n.IfaceID)
	c.required("host_dev_name", n.HostDevName)
	if len(n.HostDevName) > 15 { // IFNAMSIZ is 16 with the NUL
		c.fail("host_dev_name", "%q is longer than 15 bytes", n.HostDevName)
	}
	if n.GuestMAC != "" && !validMAC(n.GuestMAC) {
		c.fail("guest_mac", "%q is not of the form aa:bb:cc:dd:ee:ff", n.GuestMAC)
	}
	c.rateLimiter("rx_rate_limiter", n.RxRateLimiter)
	c.rateLimiter("tx_rate_limiter", n.TxRateLimiter)
}

func validMAC(s string) bool {
	if len(s) != 17 {
		return false
	}
	for i := 0; i < len(s); i++ {
		hex := s[i] >= '0' && s[i] <= '9' || s[i] >= 'a' && s[i] <= 'f' || s[i] >= 'A' && s[i] <= 'F'
		if i%3 == 2 && s[i] != ':' || i%3 != 2 && !hex {
			return false
		}
	}
	return true
}

func (v Vsock) check(c *checker) {
	if v.GuestCID < 3 { // 0-2 are reserved for the hypervisor and host
		c.fail("guest_cid", "must be at least 3, got %d", v.GuestCID)
	}
	c.required("uds_path", v.UDSPath)
}

func (l Logger) check(c *checker) {
	if l.Level != "" && !slices.ContainsFunc([]string{"Error", "Warning", "Info", "Debug", "Trace", "Off"},
		func(s string) bool { return strings.EqualFold(s, l.Level) }) {
		c.fail("level", "%q is not one of Error, Warning, Info, Debug, Trace, Off", l.Level)
	}
}

func (m Metrics) check(c *checker) { c.required("metrics_path", m.MetricsPath) }

func (e Entropy) check(c *checker) { c.rateLimiter("rate_limiter", e.RateLimiter) }

func (b Balloon) check(c *checker) {
	if b.AmountMiB < 0 {
		c.fail("amount_mib", "must not be negative, got %d", b.AmountMiB)
	}
	if b.StatsPollingIntervalS < 0 {
		c.fail("stats_polling_interval_s", "must not be negative, got %d", b.StatsPollingIntervalS)
	}
}

func (s SnapshotCreate) check(c *checker) {
	c.oneOf("snapshot_type", string(s.SnapshotType), string(SnapshotFull), string(SnapshotDiff))
	c.required("snapshot_path", s.SnapshotPath)
	c.required("mem_file_path", s.MemFilePath)
}

func (s SnapshotLoad) check(c *checker) {
	c.required("snapshot_path", s.SnapshotPath)
	c.required("mem_backend.backend_type", s.MemBackend.BackendType)
	c.oneOf("mem_backend.backend_type", s.MemBackend.BackendType, BackendFile, BackendUffd)
	c.required("mem_backend.backend_path", s.MemBackend.BackendPath)
	for i, o := range s.NetworkOverrides {
		c.required(fmt.Sprintf("network_overrides[%d].iface_id", i), o.IfaceID)
		c.required(fmt.Sprintf("network_overrides[%d].host_dev_name", i), o.HostDevName)
	}
}
