package fcapi

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzFaultMessage feeds arbitrary error bodies to the fault decoder: it must
// not panic, must give valid UTF-8, must bound text taken from a non-JSON
// body, and must return Firecracker's fault_message unchanged.
func FuzzFaultMessage(f *testing.F) {
	for _, seed := range []string{
		`{"fault_message": "The requested operation is not supported after starting the microVM."}`,
		`{"fault_message": ""}`,
		`{"fault_message": null}`,
		`{"fault_message": 42}`,
		`{"other": "x"}`,
		`[]`,
		``,
		"plain text\n",
		"\xff\xfe broken utf-8",
		strings.Repeat("é", 400),
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got := faultMessage(body)
		if !utf8.ValidString(got) {
			t.Fatalf("invalid UTF-8 %q from %q", got, body)
		}
		var e struct {
			FaultMessage *string `json:"fault_message"`
		}
		if json.Unmarshal(body, &e) == nil && e.FaultMessage != nil {
			if got != *e.FaultMessage {
				t.Fatalf("fault_message %q came back as %q", *e.FaultMessage, got)
			}
			return
		}
		if len(got) > maxRawFault+len("…") {
			t.Fatalf("raw fault of %d bytes is not bounded", len(got))
		}
	})
}

// FuzzDecodeInstanceInfo feeds arbitrary answers to GET / to its decoder: it
// must not panic, and what it accepts must round-trip.
func FuzzDecodeInstanceInfo(f *testing.F) {
	for _, seed := range []string{
		`{"id": "anonymous-instance", "state": "Not started", "vmm_version": "1.13.0", "app_name": "Firecracker"}`,
		`{"id": "vm", "state": "Running", "vmm_version": "1.13.1", "app_name": "Firecracker", "extra": [1, 2]}`,
		`{"id": "vm", "state": "Paused"}`,
		`{"id": null, "state": "Paused", "vmm_version": "1", "app_name": "x"}`,
		`{"id": 1}`,
		`null`,
		`{`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		info, err := decodeInstanceInfo(body)
		if err != nil {
			if info != (InstanceInfo{}) {
				t.Fatalf("error %v with a non-zero result %+v", err, info)
			}
			return
		}
		raw, err := json.Marshal(info)
		if err != nil {
			t.Fatal(err)
		}
		again, err := decodeInstanceInfo(raw)
		if err != nil || again != info {
			t.Fatalf("round trip of %+v gave %+v, %v", info, again, err)
		}
	})
}
