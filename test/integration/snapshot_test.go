package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/client"
	"github.com/mvm-dev/mvm/internal/snapfile"
)

type snapInfo struct {
	Name           string `json:"name"`
	Source         string `json:"source"`
	SizeBytes      int64  `json:"size_bytes"`
	BackendVersion string `json:"backend_version"`
}

func (e *env) snapshotDir(name string) string {
	e.t.Helper()
	// The directory is named by the snapshot's id: find it by its sealed name.
	key, err := snapfile.LoadOrCreateKey(filepath.Join(e.root, "snapshot.key"))
	if err != nil {
		e.t.Fatal(err)
	}
	dirs, _ := filepath.Glob(filepath.Join(e.root, "snapshots", "*"))
	for _, d := range dirs {
		if m, err := snapfile.ReadMeta(d, key); err == nil && m.Name == name {
			return d
		}
	}
	e.t.Fatalf("no snapshot directory for %s", name)
	return ""
}

// guestClockSkew returns the guest's wall clock minus the host's, measured around one
// exec: zero when the guest's reading falls between the host's readings before and
// after it. busybox adjtimex prints the time to the microsecond (its date has seconds
// only, too coarse to tell a second's skew).
func (e *env) guestClockSkew(name string) time.Duration {
	e.t.Helper()
	before := time.Now()
	out := e.mustExec(name, "adjtimex")
	after := time.Now()
	var sec, usec int64 = -1, -1
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "time.tv_sec:" {
			sec, _ = strconv.ParseInt(f[1], 10, 64)
		}
		if len(f) == 2 && f[0] == "time.tv_usec:" {
			usec, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	if sec < 0 || usec < 0 {
		e.t.Fatalf("adjtimex printed no time: %q", out)
	}
	g := time.Unix(sec, usec*1000)
	switch {
	case g.Before(before):
		return g.Sub(before)
	case g.After(after):
		return g.Sub(after)
	}
	return 0
}

// TestPauseSnapshotClones: pause and resume; a snapshot of a running VM; clones of it
// and of a template, each its own machine; the source undisturbed.
func TestPauseSnapshotClones(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.must("up", "-d", "--name", "src", "--memory", "256M", "--data-disk", "32M")
	src := e.vm("src")

	// Pause and resume, with an exec before and after.
	e.mustExec("src", "sh", "-c", "echo before-snapshot > /mnt/data/marker; echo rootfs > /root/marker; sync")
	e.must("pause", "src")
	if v := e.vm("src"); v.State != "paused" {
		t.Fatalf("state after pause: %s", v.State)
	}
	if r := e.exec("src", "true"); r.code == 0 || !strings.Contains(r.stderr, "paused") {
		t.Errorf("exec in a paused VM: %+v", r)
	}
	if r := e.run("pause", "src"); r.code == 0 || !strings.Contains(r.stderr, "already paused") {
		t.Errorf("second pause: %+v", r)
	}
	time.Sleep(1500 * time.Millisecond) // the guest sees no time pass while paused
	e.must("resume", "src")
	if got := e.mustExec("src", "cat", "/mnt/data/marker"); got != "before-snapshot\n" {
		t.Fatalf("after resume: %q", got)
	}
	if skew := e.guestClockSkew("src"); skew > time.Second || skew < -time.Second {
		t.Errorf("guest clock off by %v after a pause of 1.5 s", skew)
	}

	// A snapshot of the running VM; it goes on.
	e.must("snapshot", "create", "src", "--name", "s1")
	var snaps []snapInfo
	if err := json.Unmarshal([]byte(e.must("snapshot", "ls", "--json")), &snaps); err != nil || len(snaps) != 1 ||
		snaps[0].Name != "s1" || snaps[0].Source != "src" || snaps[0].SizeBytes == 0 {
		t.Fatalf("snapshot ls: %+v %v", snaps, err)
	}
	if r := e.run("snapshot", "create", "src", "--name", "s1"); r.code == 0 || !strings.Contains(r.stderr, "exists") {
		t.Errorf("duplicate snapshot name: %+v", r)
	}
	e.mustExec("src", "sh", "-c", "echo after-snapshot > /mnt/data/marker")

	// A template whose health command leaves a file in the snapshot.
	// Refused as `up` would refuse it, and nothing recorded.
	if r := e.run("template", "create", "fct", "--hypervisor", "firecracker"); r.code == 0 || !strings.Contains(r.stderr, "--hypervisor firecracker:") {
		t.Errorf("a Firecracker template where there is none: exit %d: %s", r.code, r.stderr)
	}
	if r := e.run("template", "create", "kt", "--kernel", "/nonexistent/vmlinux"); r.code == 0 || !strings.Contains(r.stderr, "/nonexistent/vmlinux") {
		t.Errorf("a template with a missing kernel: exit %d: %s", r.code, r.stderr)
	}
	e.must("template", "create", "api", "--memory", "256M", "--data-disk", "32M", "--health", "echo built > /root/built && sync")
	e.must("template", "build", "api")

	// Five clones of the template at once, and one of the snapshot while its source runs.
	const n = 5
	var wg sync.WaitGroup
	results := make([]result, n+1)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = e.run("up", "-d", "--template", "api", "--name", fmt.Sprintf("c%d", i))
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		results[n] = e.run("up", "-d", "--snapshot", "s1", "--name", "fromsnap")
	}()
	wg.Wait()
	for i, r := range results {
		if r.code != 0 {
			t.Fatalf("restore %d: exit %d: %s", i, r.code, r.stderr)
		}
	}

	names := []string{"fromsnap"}
	for i := 0; i < n; i++ {
		names = append(names, fmt.Sprintf("c%d", i))
	}
	// The clocks first, while little time has passed since they were set: a
	// loaded host's own wall clock has been seen to fall seconds behind its TSC,
	// which emulated guests keep time by.
	for _, name := range names {
		skew := e.guestClockSkew(name)
		if skew > time.Second || skew < -time.Second {
			t.Errorf("%s: guest clock off by %v after restore", name, skew)
		}
		t.Logf("%s: guest clock off by %v after restore", name, skew)
	}
	ips, macs, tokens, bootIDs, rand := map[string]string{}, map[string]string{}, map[string]string{}, map[string]string{}, map[string]string{}
	for _, name := range names {
		v := e.vm(name)
		if v.State != "running" {
			t.Fatalf("%s is %s", name, v.State)
		}
		ips[v.IP], macs[v.MAC] = name, name
		tok, _ := os.ReadFile(filepath.Join(e.root, "vms", v.ID, "token"))
		tokens[string(tok)] = name
		if got := strings.TrimSpace(e.mustExec(name, "hostname")); got != name {
			t.Errorf("%s: hostname %q", name, got)
		}
		if got := strings.TrimSpace(e.mustExec(name, "cat", "/sys/class/net/eth0/address")); got != v.MAC {
			t.Errorf("%s: eth0 MAC %s, ls says %s", name, got, v.MAC)
		}
		if got := e.mustExec(name, "ip", "-4", "-o", "addr", "show", "eth0"); !strings.Contains(got, "inet "+v.IP+"/") || strings.Count(got, "inet ") != 1 {
			t.Errorf("%s: eth0 %q, want only %s", name, got, v.IP)
		}
		if got := e.mustExec(name, "cat", "/mnt/config/hostname"); strings.TrimSpace(got) != name {
			t.Errorf("%s: config drive still says %q", name, got)
		}
		bootIDs[e.mustExec(name, "cat", "/proc/sys/kernel/random/boot_id")] = name
		rand[e.mustExec(name, "sh", "-c", "head -c 16 /dev/urandom | od -An -tx1")] = name
		if out, err := e.inNS("busybox", "ping", "-c", "1", "-W", "3", v.IP); err != nil {
			t.Errorf("host cannot reach %s at %s: %v %s", name, v.IP, err, out)
		}
	}
	for what, m := range map[string]map[string]string{"addresses": ips, "MACs": macs, "tokens": tokens, "boot_ids": bootIDs, "random bytes": rand} {
		if len(m) != len(names) {
			t.Errorf("clones share %s: %v", what, m)
		}
	}
	if ips[src.IP] != "" || macs[src.MAC] != "" {
		t.Errorf("a clone took the source's identity")
	}
	// Clone to clone, on the bridge.
	if r := e.exec("c0", "ping", "-c", "1", "-W", "3", e.vm("c1").IP); r.code != 0 {
		t.Errorf("c0 cannot reach c1: %s", r.stderr)
	}
	// What was written before the snapshot is in every clone.
	for i := 0; i < n; i++ {
		if got := e.mustExec(fmt.Sprintf("c%d", i), "cat", "/root/built"); got != "built\n" {
			t.Errorf("c%d: /root/built %q", i, got)
		}
	}
	if got := e.mustExec("fromsnap", "cat", "/mnt/data/marker", "/root/marker"); got != "before-snapshot\nrootfs\n" {
		t.Errorf("fromsnap: %q", got)
	}
	// The source went on undisturbed, with its own identity and disks.
	if got := e.mustExec("src", "cat", "/mnt/data/marker"); got != "after-snapshot\n" {
		t.Errorf("source data after clones: %q", got)
	}
	if got := strings.TrimSpace(e.mustExec("src", "hostname")); got != "src" {
		t.Errorf("source hostname %q", got)
	}
	if v := e.vm("src"); v.IP != src.IP || v.State != "running" {
		t.Errorf("source changed: %+v", v)
	}
	// The snapshot's token no longer opens a clone's agent.
	snapTok, err := os.ReadFile(filepath.Join(e.snapshotDir("s1"), "token"))
	if err != nil {
		t.Fatal(err)
	}
	fs := e.vm("fromsnap")
	old := client.NewHybrid(filepath.Join(e.root, "vms", fs.ID, "agent.sock"), snapTok)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := old.Ping(ctx); err == nil {
		t.Error("the snapshot's agent token still opens a clone")
	}

	// Rebuilding the template replaces its snapshot; clones already running go on.
	e.must("template", "build", "api")
	if got := e.mustExec("c0", "cat", "/root/built"); got != "built\n" {
		t.Errorf("c0 after rebuild: %q", got)
	}
	var tps []struct {
		Name  string `json:"name"`
		Built bool   `json:"built"`
	}
	if err := json.Unmarshal([]byte(e.must("template", "ls", "--json")), &tps); err != nil || len(tps) != 1 || !tps[0].Built {
		t.Errorf("template ls: %+v %v", tps, err)
	}
	if dirs, _ := filepath.Glob(filepath.Join(e.root, "snapshots", "*")); len(dirs) != 2 {
		t.Errorf("snapshot directories after a rebuild: %v (want s1's and the template's)", dirs)
	}
}

// TestSnapshotRefusals: a modified, truncated or foreign snapshot is refused and
// nothing is left of the attempt.
func TestSnapshotRefusals(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.must("up", "-d", "--name", "src", "--network", "none", "--memory", "192M")
	e.must("snapshot", "create", "src", "--name", "good")
	dir := e.snapshotDir("good")
	copySnap := func(name string) string {
		e.must("snapshot", "create", "src", "--name", name)
		return e.snapshotDir(name)
	}
	before := len(e.vmDirs())

	// Flipped bytes in the memory state: caught while it loads, before the guest runs.
	mem := copySnap("mem")
	f, err := os.OpenFile(filepath.Join(mem, "memory"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	f.WriteAt([]byte("tampered"), st.Size()/2)
	f.Close()
	// A truncated disk.
	trunc := copySnap("trunc")
	if err := os.Truncate(filepath.Join(trunc, "rootfs"), 1<<20); err != nil {
		t.Fatal(err)
	}
	// A byte of the metadata.
	meta := copySnap("meta")
	raw, _ := os.ReadFile(filepath.Join(meta, "meta.json"))
	edited := strings.Replace(string(raw), `"cpus": 1,`, `"cpus": 2,`, 1)
	if edited == string(raw) {
		t.Fatalf("meta.json has no \"cpus\": 1 to edit:\n%s", raw)
	}
	os.WriteFile(filepath.Join(meta, "meta.json"), []byte(edited), 0o600)
	// Another QEMU version, sealed properly (as a snapshot from another host would be
	// if it shared the key): refused for what it says, not for its seal.
	other := copySnap("other")
	key, err := snapfile.LoadOrCreateKey(filepath.Join(e.root, "snapshot.key"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := snapfile.ReadMeta(other, key)
	if err != nil {
		t.Fatal(err)
	}
	m.BackendVersion = "6.0.0"
	if err := snapfile.WriteMeta(other, key, m); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct{ snap, want string }{
		{"mem", "modified"},
		{"trunc", "modified"},
		{"meta", "modified"},
		{"other", "QEMU 6.0.0"},
	} {
		r := e.run("up", "-d", "--snapshot", tc.snap, "--name", "x-"+tc.snap)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: exit %d, stderr %q, want %q", tc.snap, r.code, r.stderr, tc.want)
		}
		for _, v := range e.ls(true) {
			if v.Name == "x-"+tc.snap {
				t.Errorf("%s: the refused VM is listed: %+v", tc.snap, v)
			}
		}
	}
	if after := len(e.vmDirs()); after != before {
		t.Errorf("refused restores left VM directories: %d before, %d after", before, after)
	}
	// Hardware the snapshot does not have is refused before anything is made.
	if r := e.run("up", "-d", "--snapshot", "good", "--memory", "512M"); r.code == 0 || !strings.Contains(r.stderr, "--memory") {
		t.Errorf("memory override: %+v", r)
	}
	if r := e.run("up", "-d", "--snapshot", "nosuch"); r.code == 0 || !strings.Contains(r.stderr, "snapshot ls") {
		t.Errorf("missing snapshot: %+v", r)
	}
	// The untouched one still works, and rm removes its files.
	e.must("up", "-d", "--snapshot", "good", "--name", "ok")
	if got := e.mustExec("ok", "hostname"); got != "ok\n" {
		t.Errorf("hostname %q", got)
	}
	e.must("snapshot", "rm", "good")
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("snapshot directory left after rm: %v", err)
	}
}

// TestSleepWake: sleep frees the process and keeps data and address; wake brings the
// VM back as it was.
func TestSleepWake(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.must("up", "-d", "--name", "sl", "--memory", "256M", "--data-disk", "32M")
	before := e.vm("sl")
	e.mustExec("sl", "sh", "-c", "echo kept > /mnt/data/f; echo mem > /dev/shm/m; sync") // /dev/shm: only in memory
	e.must("sleep", "sl")
	v := e.vm("sl")
	if v.State != "sleeping" || v.IP != before.IP {
		t.Fatalf("after sleep: %+v", v)
	}
	if out := pidOf("qemu-system.*" + e.root); len(out) > 0 {
		t.Errorf("a hypervisor runs for a sleeping VM: %v", out)
	}
	var disk []struct {
		Name      string `json:"name"`
		DiskBytes int64  `json:"disk_bytes"`
	}
	if err := json.Unmarshal([]byte(e.must("ls", "--json")), &disk); err != nil || len(disk) != 1 || disk[0].DiskBytes == 0 {
		t.Errorf("ls of a sleeping VM: %+v %v", disk, err)
	}
	if r := e.exec("sl", "true"); r.code == 0 || !strings.Contains(r.stderr, "wake") {
		t.Errorf("exec while sleeping: %+v", r)
	}
	// Another VM cannot take its address meanwhile.
	e.must("up", "-d", "--name", "other", "--memory", "160M")
	if e.vm("other").IP == before.IP {
		t.Error("a sleeping VM's address was given away")
	}
	e.must("wake", "sl")
	after := e.vm("sl")
	if after.State != "running" || after.IP != before.IP || after.MAC != before.MAC {
		t.Fatalf("after wake: %+v, before %+v", after, before)
	}
	if got := e.mustExec("sl", "sh", "-c", "cat /mnt/data/f /dev/shm/m"); got != "kept\nmem\n" {
		t.Errorf("after wake: %q", got)
	}
	if skew := e.guestClockSkew("sl"); skew > time.Second || skew < -time.Second {
		t.Errorf("guest clock off by %v after wake", skew)
	}
	if r := e.run("wake", "sl"); r.code == 0 || !strings.Contains(r.stderr, "not sleeping") {
		t.Errorf("wake of a running VM: %+v", r)
	}
	// A sleeping VM can be removed: its address is released.
	e.must("sleep", "sl")
	e.must("down", "sl")
	e.must("up", "-d", "--name", "reuse", "--memory", "160M")
	if e.vm("reuse").IP != before.IP {
		t.Errorf("the removed sleeping VM's address was not released")
	}
}
