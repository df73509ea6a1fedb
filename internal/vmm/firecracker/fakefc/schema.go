package fakefc

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// The request bodies Firecracker 1.13 accepts, written from the definitions in
// its API description. Kept apart from fcapi on purpose: if the client and the
// fake shared types, a wrong field name would pass on both sides.

type kind int

const (
	kString kind = iota
	kBool
	kUint
	kObject
	kArray
)

type field struct {
	kind     kind
	required bool
	enum     []string
	fold     bool   // enum matched case-insensitively (logger level)
	min      uint64 // for kUint
	fields   schema // for kObject, and the items of kArray
}

type schema map[string]field

func req(f field) field            { f.required = true; return f }
func str() field                   { return field{kind: kString} }
func boolean() field               { return field{kind: kBool} }
func uint_() field                 { return field{kind: kUint} }
func uintMin(min uint64) field     { return field{kind: kUint, min: min} }
func object(s schema) field        { return field{kind: kObject, fields: s} }
func arrayOf(s schema) field       { return field{kind: kArray, fields: s} }
func enumOf(v ...string) field     { return field{kind: kString, enum: v} }
func foldEnumOf(v ...string) field { return field{kind: kString, enum: v, fold: true} }

// schemas returns the body definitions by name. Built per server so no
// package-level map exists to be mutated.
func schemas() map[string]schema {
	tokenBucket := schema{"size": req(uint_()), "one_time_burst": uint_(), "refill_time": req(uint_())}
	rateLimiter := schema{"bandwidth": object(tokenBucket), "ops": object(tokenBucket)}
	return map[string]schema{
		"BootSource": {"kernel_image_path": req(str()), "boot_args": str(), "initrd_path": str()},
		"MachineConfiguration": {
			"vcpu_count": req(uint_()), "mem_size_mib": req(uint_()),
			"smt": boolean(), "track_dirty_pages": boolean(),
			"cpu_template": enumOf("C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"),
			"huge_pages":   enumOf("None", "2M"),
		},
		"Drive": {
			"drive_id": req(str()), "partuuid": str(), "is_root_device": req(boolean()),
			"cache_type": enumOf("Unsafe", "Writeback"), "is_read_only": boolean(),
			"path_on_host": str(), "rate_limiter": object(rateLimiter),
			"io_engine": enumOf("Sync", "Async"), "socket": str(),
		},
		"NetworkInterface": {
			"iface_id": req(str()), "host_dev_name": req(str()), "guest_mac": str(),
			"rx_rate_limiter": object(rateLimiter), "tx_rate_limiter": object(rateLimiter),
		},
		"Vsock":              {"guest_cid": req(uintMin(3)), "uds_path": req(str()), "vsock_id": str()},
		"Logger":             {"level": foldEnumOf("Error", "Warning", "Info", "Debug", "Trace", "Off"), "log_path": str(), "show_level": boolean(), "show_log_origin": boolean(), "module": str()},
		"Metrics":            {"metrics_path": req(str())},
		"EntropyDevice":      {"rate_limiter": object(rateLimiter)},
		"Balloon":            {"amount_mib": req(uint_()), "deflate_on_oom": req(boolean()), "stats_polling_interval_s": uint_()},
		"InstanceActionInfo": {"action_type": req(enumOf("FlushMetrics", "InstanceStart", "SendCtrlAltDel"))},
		"Vm":                 {"state": req(enumOf("Paused", "Resumed"))},
		"SnapshotCreateParams": {
			"mem_file_path": req(str()), "snapshot_path": req(str()), "snapshot_type": enumOf("Full", "Diff"),
		},
		"SnapshotLoadParams": {
			"snapshot_path": req(str()), "enable_diff_snapshots": boolean(), "track_dirty_pages": boolean(),
			"mem_file_path": str(), "resume_vm": boolean(),
			"mem_backend":       object(schema{"backend_type": req(enumOf("File", "Uffd")), "backend_path": req(str())}),
			"network_overrides": arrayOf(schema{"iface_id": req(str()), "host_dev_name": req(str())}),
		},
	}
}

// check reports the first violation, in the spirit of serde with
// deny_unknown_fields. Keys are visited in sorted order so messages are stable.
func (s schema) check(at string, v any) error {
	m, ok := v.(map[string]any)
	if !ok {
		return fmt.Errorf("invalid type%s: %s, expected a JSON object", where(at), describe(v))
	}
	for _, k := range sortedKeys(m) {
		f, ok := s[k]
		if !ok {
			return fmt.Errorf("unknown field `%s`%s, expected one of %s", k, where(at), s.names())
		}
		if m[k] == nil && !f.required {
			continue // serde reads null as None for optional fields
		}
		if err := f.check(join(at, k), m[k]); err != nil {
			return err
		}
	}
	for _, k := range sortedKeys(s) {
		if _, ok := m[k]; s[k].required && !ok {
			return fmt.Errorf("missing field `%s`%s", k, where(at))
		}
	}
	return nil
}

func (f field) check(at string, v any) error {
	switch f.kind {
	case kString:
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("invalid type for `%s`: %s, expected a string", at, describe(v))
		}
		if len(f.enum) > 0 && !slices.ContainsFunc(f.enum, func(e string) bool {
			return e == s || f.fold && strings.EqualFold(e, s)
		}) {
			return fmt.Errorf("unknown variant `%s` for `%s`, expected one of `%s`", s, at, strings.Join(f.enum, "`, `"))
		}
	case kBool:
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("invalid type for `%s`: %s, expected a boolean", at, describe(v))
		}
	case kUint:
		n, ok := v.(json.Number)
		if !ok {
			return fmt.Errorf("invalid type for `%s`: %s, expected an unsigned integer", at, describe(v))
		}
		u, err := strconv.ParseUint(n.String(), 10, 64)
		if err != nil {
			return fmt.Errorf("invalid value for `%s`: %s, expected an unsigned integer", at, n)
		}
		if u < f.min {
			return fmt.Errorf("invalid value for `%s`: %d, expected at least %d", at, u, f.min)
		}
	case kObject:
		return f.fields.check(at, v)
	case kArray:
		items, ok := v.([]any)
		if !ok {
			return fmt.Errorf("invalid type for `%s`: %s, expected an array", at, describe(v))
		}
		for i, item := range items {
			if err := f.fields.check(fmt.Sprintf("%s[%d]", at, i), item); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s schema) names() string {
	return "`" + strings.Join(sortedKeys(s), "`, `") + "`"
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func join(at, k string) string {
	if at == "" {
		return k
	}
	return at + "." + k
}

func where(at string) string {
	if at == "" {
		return ""
	}
	return " in `" + at + "`"
}

func describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case string:
		return strconv.Quote(v)
	case bool:
		return strconv.FormatBool(v)
	case json.Number:
		return "number " + v.String()
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}
