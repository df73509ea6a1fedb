package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/bulk"
	"github.com/mvm-dev/mvm/internal/agent/client"
	"github.com/mvm-dev/mvm/internal/agent/hybrid"
	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/archive"
)

// shortSysfsFile is a file whose stat size (4096) is more than it holds: packing it
// fails after its header went out, as a file deleted or cut short mid-copy does.
func shortSysfsFile(t *testing.T) string {
	const p = "/sys/devices/virtual/net/lo/mtu"
	if st, err := os.Stat(p); err != nil || st.Size() != 4096 {
		t.Skipf("no sysfs file to fail a copy with: %v", err)
	}
	return p
}

// holdBulk takes the bulk channel, so copies fall back to frames.
func holdBulk(t *testing.T, sock string) {
	t.Helper()
	hold, err := client.DialHybrid(context.Background(), sock, proto.BulkPort)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hold.Close() })
}

// usesBulk reports whether a copy out made now goes over the bulk channel.
func usesBulk(t *testing.T, cl *client.Client, b *hybrid.Exclusive) bool {
	t.Helper()
	src := filepath.Join(t.TempDir(), "probe")
	os.WriteFile(src, bytes.Repeat([]byte("p"), 256<<10), 0o644)
	before := b.Forwarded()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cl.CopyOut(ctx, src, filepath.Join(t.TempDir(), "probe")); err != nil {
		t.Fatalf("copy out: %v", err)
	}
	return b.Forwarded()-before >= 256<<10
}

// TestCopyOutSenderFailsMidStream: when the agent fails after it started sending, the
// copy ends at once with its reason, on the bulk channel as in frames (the host used
// to wait on the bulk channel for bytes that never came).
func TestCopyOutSenderFailsMidStream(t *testing.T) {
	src := shortSysfsFile(t)
	for _, framed := range []bool{false, true} {
		t.Run(map[bool]string{false: "bulk", true: "framed"}[framed], func(t *testing.T) {
			sock, _, b := stackWithBulk(t, goodToken)
			cl := client.NewHybrid(sock, goodToken)
			if framed {
				holdBulk(t, sock)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			_, err := cl.CopyOut(ctx, src, filepath.Join(t.TempDir(), "mtu"))
			if err == nil || !strings.Contains(err.Error(), "the agent failed") || time.Since(start) > 5*time.Second {
				t.Fatalf("copy of a failing source: %v after %v", err, time.Since(start))
			}
			if !framed && !usesBulk(t, cl, b) {
				t.Fatal("the bulk channel is not usable after the failed copy")
			}
		})
	}
}

// TestCopyInSenderFailsMidStream: the same with the host as the failing sender: the
// agent stops reading the bulk channel when Done says so, answers, and lets go of
// the channel (it used to wait on it for ever, holding it).
func TestCopyInSenderFailsMidStream(t *testing.T) {
	src := shortSysfsFile(t)
	sock, _, b := stackWithBulk(t, goodToken)
	cl := client.NewHybrid(sock, goodToken)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := cl.CopyIn(ctx, src, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "the sender failed") || time.Since(start) > 5*time.Second {
		t.Fatalf("copy in of a failing source: %v after %v", err, time.Since(start))
	}
	if !usesBulk(t, cl, b) {
		t.Fatal("the agent still holds the bulk channel")
	}
}

// TestCopyInRefusedFramed: a framed copy in that the agent refuses part way (here
// at the second entry, while the host is still sending) ends at once with the reason;
// the client used to wait for its sender, blocked on a stream window nobody emptied.
func TestCopyInRefusedFramed(t *testing.T) {
	sock, _ := stack(t, goodToken)
	holdBulk(t, sock)
	cl := client.NewHybrid(sock, goodToken)
	src := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(src, "b"), 0o755)
	os.WriteFile(filepath.Join(src, "a"), bytes.Repeat([]byte("a"), 8<<20), 0o644)
	os.WriteFile(filepath.Join(src, "c"), bytes.Repeat([]byte("c"), 32<<20), 0o644)
	guest := t.TempDir()
	os.MkdirAll(filepath.Join(guest, "tree"), 0o755)
	os.WriteFile(filepath.Join(guest, "tree", "b"), nil, 0o644) // a file where the directory goes
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err := cl.CopyIn(ctx, src, guest)
	if err == nil || !strings.Contains(err.Error(), "cannot overwrite non-directory") || time.Since(start) > 10*time.Second {
		t.Fatalf("refused copy: %v after %v", err, time.Since(start))
	}
}

// TestCopyInRefusedReleasesBulk: a bulk copy in that the agent refuses early leaves
// the rest of the host's stream unread; the channel must still come free for the
// next copy (the supervisor's side used to block on it for ever).
func TestCopyInRefusedReleasesBulk(t *testing.T) {
	sock, _, b := stackWithBulk(t, goodToken)
	cl := client.NewHybrid(sock, goodToken)
	src := filepath.Join(t.TempDir(), "big")
	os.WriteFile(src, bytes.Repeat([]byte("y"), 32<<20), 0o644)
	guest := t.TempDir()
	os.Mkdir(filepath.Join(guest, "big"), 0o755) // a directory where the file would go
	if _, err := cl.CopyIn(context.Background(), src, guest); err == nil || !strings.Contains(err.Error(), "cannot overwrite directory") {
		t.Fatalf("refused copy in: %v", err)
	}
	if !usesBulk(t, cl, b) {
		t.Fatal("the bulk channel stays busy after a refused copy in")
	}
}

// TestFailedCopyInLeavesChannelClean: a bulk copy in the agent refuses must not leave
// a read deadline on its port for the copies after it.
func TestFailedCopyInLeavesChannelClean(t *testing.T) {
	sock, _ := stack(t, goodToken)
	cl := client.NewHybrid(sock, goodToken)
	src := filepath.Join(t.TempDir(), "f")
	os.WriteFile(src, bytes.Repeat([]byte("q"), 512<<10), 0o644)
	guest := t.TempDir()
	os.Mkdir(filepath.Join(guest, "f"), 0o755) // conflict
	if _, err := cl.CopyIn(context.Background(), src, guest); err == nil {
		t.Fatal("copy over a directory accepted")
	}
	small := filepath.Join(t.TempDir(), "s")
	os.WriteFile(small, []byte("hello"), 0o644)
	for i := 0; i < 3; i++ {
		time.Sleep(100 * time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		dst := filepath.Join(t.TempDir(), "ok")
		_, err := cl.CopyIn(ctx, small, dst)
		cancel()
		if got, _ := os.ReadFile(dst); err != nil || string(got) != "hello" {
			t.Fatalf("copy %d after the refused one: %v", i, err)
		}
	}
}

// openRaw opens an authenticated agent connection carrying req, for tests that must
// misbehave where the client would not.
func openRaw(t *testing.T, sock string, req proto.Request) (net.Conn, *proto.Conn) {
	t.Helper()
	c, err := client.DialHybrid(context.Background(), sock, proto.AgentPort)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	reqJSON, _ := json.Marshal(req)
	nonce, _ := proto.NewNonce()
	now := time.Now().UnixNano()
	pc := proto.NewConn(c)
	pc.WriteJSON(proto.TAuth, proto.Auth{Proto: proto.Version, Nonce: nonce, TimeNs: now, MAC: proto.HostMAC(goodToken, nonce, now, nil, reqJSON)})
	pc.WriteControl(proto.TRequest, reqJSON)
	if err := pc.Expect(proto.TAuthOK, nil); err != nil {
		t.Fatal(err)
	}
	return c, pc
}

// TestCopyInBulkHostLeavesBeforeDone: a host that sent the whole stream on the bulk
// channel but left before its Done must not leave the agent waiting for that Done for
// ever, holding the channel.
func TestCopyInBulkHostLeavesBeforeDone(t *testing.T) {
	sock, _, b := stackWithBulk(t, goodToken)
	src := filepath.Join(t.TempDir(), "f")
	os.WriteFile(src, []byte("hello"), 0o644)
	info, _ := archive.Stat(src)
	bc, err := client.DialHybrid(context.Background(), sock, proto.BulkPort)
	if err != nil {
		t.Fatal(err)
	}
	id := bulk.NewID()
	c, pc := openRaw(t, sock, proto.Request{Op: proto.OpCopyIn, Copy: &proto.Copy{Path: filepath.Join(t.TempDir(), "f"),
		Bulk: true, BulkID: id, Source: &proto.CopySource{Base: info.Base}}})
	var resp proto.Response
	if err := pc.Expect(proto.TResponse, &resp); err != nil || resp.BulkID != id {
		t.Fatalf("bulk not taken: %+v %v", resp, err)
	}
	w, _ := bulk.NewWriter(bc.(bulk.Channel), id)
	if _, _, err := archive.PackWith(context.Background(), w, src, archive.PackOptions{Content: w.SendFile}); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	time.Sleep(100 * time.Millisecond) // the agent has unpacked it all
	c.Close()                          // and no Done
	bc.Close()
	// The agent learns of the host's departure when the closes have crossed the
	// link, so the channel comes free soon after, not at once: give it 2 s.
	cl := client.NewHybrid(sock, goodToken)
	for deadline := time.Now().Add(2 * time.Second); !usesBulk(t, cl, b); {
		if time.Now().After(deadline) {
			t.Fatal("the agent still holds the bulk channel")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAbandonedCopyOutStops: a copy out the host gives up on stops in the guest
// instead of sending the rest of the tree into the drain (holding the channel).
func TestAbandonedCopyOutStops(t *testing.T) {
	sock, _, b := stackWithBulk(t, goodToken)
	cl := client.NewHybrid(sock, goodToken)
	big := filepath.Join(t.TempDir(), "big")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 30) // sparse: minutes of sending
	f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err = cl.CopyOut(ctx, big, filepath.Join(t.TempDir(), "o"))
	cancel()
	if err == nil {
		t.Fatal("the abandoned copy succeeded")
	}
	// Take the channel and see what the guest still sends.
	deadline := time.Now().Add(5 * time.Second)
	for {
		h, err := b.Attach()
		if err != nil {
			t.Fatal(err)
		}
		var n countWriter
		h.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		io.Copy(&n, h)
		h.Close()
		if n.n < 1<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest still sends the abandoned copy (%d bytes in 300 ms)", n.n)
		}
	}
	if !usesBulk(t, cl, b) {
		t.Fatal("the bulk channel is not usable after the abandoned copy")
	}
}
