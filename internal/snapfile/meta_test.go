package snapfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var testKey = bytes.Repeat([]byte{0x5a}, keySize)

func sampleMeta() Meta {
	return Meta{
		Format:         Format,
		ID:             "01J9Z8Q4ABCDEF",
		Name:           "web-snap",
		Kind:           "snapshot",
		Source:         "web",
		CreatedAt:      time.Date(2025, 3, 4, 5, 6, 7, 890, time.UTC),
		MvmVersion:     "0.4.0",
		AgentProto:     3,
		Backend:        "qemu",
		BackendVersion: "7.2.19",
		Accel:          "kvm",
		CPUModel:       "AMD EPYC <&>", // exercises JSON's HTML escaping
		CPUFlags:       []string{"avx2", "sse4_2"},
		ImageDigest:    "sha256:" + strings.Repeat("ab", 32),
		Kernel:         "6.1.0-28-cloud-amd64",
		CPUs:           2,
		MemoryMiB:      512,
		DataDiskMiB:    1024,
		NIC:            true,
		Files: []FileEntry{
			{FileMemory, Digest{Size: 70 << 20, SHA256: strings.Repeat("0f", 32)}},
			{FileRootfs, Digest{Size: 512 << 20, SHA256: strings.Repeat("1e", 32)}},
			{FileData, Digest{Size: 1 << 30, SHA256: strings.Repeat("2d", 32)}},
			{FileToken, Digest{Size: 32, SHA256: strings.Repeat("3c", 32)}},
		},
	}
}

func TestSealOpen(t *testing.T) {
	for _, m := range []Meta{
		sampleMeta(),
		func() Meta { // minimal: no files, no flags, zero time
			return Meta{Format: Format, ID: "x", Name: "y", Backend: "qemu", CPUs: 1, MemoryMiB: 1}
		}(),
		func() Meta { // non-UTC time zone and empty, non-nil slices
			m := sampleMeta()
			m.CreatedAt = time.Date(2025, 1, 1, 0, 0, 0, 0, time.FixedZone("", 5*3600+1800))
			m.CPUFlags, m.Files = []string{}, []FileEntry{}
			return m
		}(),
	} {
		b, err := Seal(testKey, m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Open(testKey, b)
		if err != nil {
			t.Fatalf("Open: %v\n%s", err, b)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, m)
		}
	}
}

func TestOpenFlippedByte(t *testing.T) {
	b, err := Seal(testKey, sampleMeta())
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		for bit := range 8 {
			c := bytes.Clone(b)
			c[i] ^= 1 << bit
			if _, err := Open(testKey, c); err == nil {
				t.Fatalf("byte %d bit %d flipped (%q -> %q): Open succeeded", i, bit, b[i], c[i])
			}
		}
	}
}

func TestOpenRefuses(t *testing.T) {
	good, err := Seal(testKey, sampleMeta())
	if err != nil {
		t.Fatal(err)
	}
	otherKey := bytes.Repeat([]byte{0xa5}, keySize)
	// reseal rewrites the meta part of good and gives it a valid MAC.
	reseal := func(edit func(map[string]any)) []byte {
		var doc map[string]any
		if err := json.Unmarshal(good, &doc); err != nil {
			t.Fatal(err)
		}
		edit(doc)
		b, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name     string
		key      []byte
		data     []byte
		tampered bool // want ErrTampered; otherwise any other error
	}{
		{"wrong key", otherKey, good, true},
		{"changed name", testKey, bytes.Replace(good, []byte(`"web-snap"`), []byte(`"web-snaq"`), 1), true},
		{"changed size", testKey, bytes.Replace(good, []byte(`"size": 32`), []byte(`"size": 33`), 1), true},
		{"file removed", testKey, reseal(func(d map[string]any) {
			m := d["meta"].(map[string]any)
			m["files"] = m["files"].([]any)[1:]
		}), true},
		{"upper-case key", testKey, bytes.Replace(good, []byte(`"name"`), []byte(`"Name"`), 1), true},
		{"upper-case mac", testKey, func() []byte {
			var s sealed
			if err := json.Unmarshal(good, &s); err != nil {
				t.Fatal(err)
			}
			return bytes.Replace(good, []byte(s.MAC), []byte(strings.ToUpper(s.MAC)), 1)
		}(), true},
		{"keys reordered", testKey, reseal(func(map[string]any) {}), true}, // maps marshal sorted
		{"duplicate key", testKey, bytes.Replace(good, []byte(`"kind"`), []byte(`"name": "x", "kind"`), 1), true},
		{"unknown field in meta", testKey, bytes.Replace(good, []byte(`"kind"`), []byte(`"extra": 1, "kind"`), 1), false},
		{"unknown top-level field", testKey, bytes.Replace(good, []byte(`"mac"`), []byte(`"x": 1, "mac"`), 1), false},
		{"trailing data", testKey, append(bytes.Clone(good), `{}`...), false},
		{"trailing garbage", testKey, append(bytes.Clone(good), `x`...), false},
		{"truncated", testKey, good[:len(good)/2], false},
		{"empty", testKey, nil, false},
		{"null", testKey, []byte("null"), false},
		{"short mac", testKey, bytes.Replace(good, []byte(`"mac": "`), []byte(`"mac": "00`), 1), false},
		{"too big", testKey, append(bytes.Clone(good), bytes.Repeat([]byte(" "), maxMetaSize)...), false},
		{"empty key", nil, good, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(tc.key, tc.data)
			if err == nil {
				t.Fatal("Open succeeded")
			}
			if tc.tampered != errors.Is(err, ErrTampered) {
				t.Fatalf("err %v; want ErrTampered: %v", err, tc.tampered)
			}
		})
	}

	// Whitespace is not significant: reformatted but unchanged opens.
	var compact bytes.Buffer
	if err := json.Compact(&compact, good); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(testKey, compact.Bytes()); err != nil {
		t.Errorf("compacted meta: %v", err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Meta)
		ok   bool
	}{
		{"sample", func(*Meta) {}, true},
		{"no files", func(m *Meta) { m.Files = nil }, true},
		{"zero size file", func(m *Meta) { m.Files[3].Digest.Size = 0 }, true},
		{"own kernel", func(m *Meta) { m.Files = append(m.Files, FileEntry{FileKernel, m.Files[0].Digest}) }, true},
		{"format 0", func(m *Meta) { m.Format = 0 }, false},
		{"format 2", func(m *Meta) { m.Format = 2 }, false},
		{"empty id", func(m *Meta) { m.ID = "" }, false},
		{"empty name", func(m *Meta) { m.Name = "" }, false},
		{"empty backend", func(m *Meta) { m.Backend = "" }, false},
		{"zero cpus", func(m *Meta) { m.CPUs = 0 }, false},
		{"negative cpus", func(m *Meta) { m.CPUs = -1 }, false},
		{"zero memory", func(m *Meta) { m.MemoryMiB = 0 }, false},
		{"unknown file", func(m *Meta) { m.Files[0].Name = "disk" }, false},
		{"path file name", func(m *Meta) { m.Files[0].Name = "../memory" }, false},
		{"dir file name", func(m *Meta) { m.Files[0].Name = "x/rootfs" }, false},
		{"empty file name", func(m *Meta) { m.Files[0].Name = "" }, false},
		{"duplicate file", func(m *Meta) { m.Files[1].Name = FileMemory }, false},
		{"negative size", func(m *Meta) { m.Files[0].Digest.Size = -1 }, false},
		{"short sha256", func(m *Meta) { m.Files[0].Digest.SHA256 = "abc" }, false},
		{"long sha256", func(m *Meta) { m.Files[0].Digest.SHA256 += "0" }, false},
		{"upper-case sha256", func(m *Meta) { m.Files[0].Digest.SHA256 = strings.Repeat("AB", 32) }, false},
		{"non-hex sha256", func(m *Meta) { m.Files[0].Digest.SHA256 = strings.Repeat("g", 64) }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := sampleMeta()
			tc.edit(&m)
			err := m.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate: %v, want ok %v", err, tc.ok)
			}
			if _, serr := Seal(testKey, m); (serr == nil) != tc.ok {
				t.Fatalf("Seal: %v, want ok %v", serr, tc.ok)
			}
		})
	}
}

func TestMetaFile(t *testing.T) {
	m := sampleMeta()
	f, ok := m.File(FileRootfs)
	if !ok || f.Digest.Size != 512<<20 {
		t.Errorf("File(rootfs) = %+v, %v", f, ok)
	}
	m.Files = m.Files[:2]
	if _, ok := m.File(FileData); ok {
		t.Error("File(data) found in a meta without it")
	}
}

func TestWriteReadMeta(t *testing.T) {
	dir := t.TempDir()
	m := sampleMeta()
	if err := WriteMeta(dir, testKey, m); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, MetaFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("meta.json mode %v, want 0600", fi.Mode().Perm())
	}
	got, err := ReadMeta(dir, testKey)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Errorf("ReadMeta:\n got %+v\nwant %+v", got, m)
	}

	// Replacing works and leaves no temporary files.
	m.Name = "renamed"
	if err := WriteMeta(dir, testKey, m); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadMeta(dir, testKey); err != nil || got.Name != "renamed" {
		t.Errorf("after rewrite: %+v, %v", got.Name, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only meta.json", len(ents))
	}

	if _, err := ReadMeta(dir, bytes.Repeat([]byte{1}, keySize)); !errors.Is(err, ErrTampered) {
		t.Errorf("other key: %v, want ErrTampered", err)
	}
	if err := WriteMeta(dir, testKey, Meta{}); err == nil {
		t.Error("invalid meta written")
	}
	if _, err := ReadMeta(t.TempDir(), testKey); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing meta.json: %v, want ErrNotExist", err)
	}

	big := filepath.Join(t.TempDir(), MetaFile)
	if err := os.WriteFile(big, bytes.Repeat([]byte(" "), maxMetaSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadMeta(filepath.Dir(big), testKey); err == nil || errors.Is(err, ErrTampered) {
		t.Errorf("oversized meta.json: %v, want a size error", err)
	}
}

// FuzzOpen checks that Open never panics and only accepts what Seal
// produced with the key: anything it opens must be one of the sealed metas
// (the fuzzer cannot forge a MAC), and must survive another round trip.
func FuzzOpen(f *testing.F) {
	var metas []Meta
	m := sampleMeta()
	metas = append(metas, m)
	m.Files, m.CPUFlags, m.DataDiskMiB = nil, nil, 0
	metas = append(metas, m)
	m.Name, m.CreatedAt = "other", time.Date(2030, 1, 1, 0, 0, 0, 0, time.FixedZone("", -7*3600))
	metas = append(metas, m)

	sealedCanon := map[string]bool{}
	for _, m := range metas {
		b, err := Seal(testKey, m)
		if err != nil {
			f.Fatal(err)
		}
		canon, _ := json.Marshal(m)
		sealedCanon[string(canon)] = true
		f.Add(b)
		var c bytes.Buffer
		json.Compact(&c, b)
		f.Add(c.Bytes())
		f.Add(b[:len(b)/2])
		other, _ := Seal(bytes.Repeat([]byte{1}, keySize), m)
		f.Add(other)
	}
	for _, s := range []string{"", "{}", "null", `{"meta":{},"mac":""}`, `{"meta":{"format":1},"mac":"` + strings.Repeat("0", 64) + `"}`, "[", `"\ud800"`} {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Open(testKey, data)
		if err != nil {
			return
		}
		canon, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("opened meta does not marshal: %v", err)
		}
		if !sealedCanon[string(canon)] {
			t.Fatalf("Open accepted a meta that was never sealed:\n%s", data)
		}
		b, err := Seal(testKey, m)
		if err != nil {
			t.Fatalf("opened meta does not seal: %v", err)
		}
		m2, err := Open(testKey, b)
		if err != nil {
			t.Fatalf("resealed meta does not open: %v", err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip changed meta:\n%+v\n%+v", m, m2)
		}
	})
}
