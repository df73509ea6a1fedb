package hybrid

import (
	"bytes"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// portPair is the bulk port as the supervisor sees it (host) and as the guest does.
func portPair(t *testing.T) (host, guest net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "port")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	host, guest = conn(fds[0]), conn(fds[1])
	t.Cleanup(func() { host.Close(); guest.Close() })
	return host, guest
}

// readUntil reads r until want has been seen, or fails after a while.
func readUntil(t *testing.T, r net.Conn, want string) {
	t.Helper()
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer r.SetReadDeadline(time.Time{})
	var got []byte
	buf := make([]byte, 64<<10)
	for !bytes.Contains(got, []byte(want)) {
		n, err := r.Read(buf)
		got = append(got, buf[:n]...)
		if len(got) > 1<<10 {
			got = got[len(got)-1<<10:]
		}
		if err != nil {
			t.Fatalf("waiting for %q: %v", want, err)
		}
	}
}

// TestExclusiveRefusedTransferReleased: a holder whose transfer the guest stopped
// reading (it refused it) hangs up with bytes still on their way; the next holder
// gets the stream anyway (it used to stay busy for ever, every later copy falling
// back to frames) and its bytes reach the guest.
func TestExclusiveRefusedTransferReleased(t *testing.T) {
	host, guest := portPair(t)
	b := NewExclusive(host)
	h1, err := b.Attach()
	if err != nil {
		t.Fatal(err)
	}
	go h1.Write(bytes.Repeat([]byte("x"), 16<<20)) // far more than the buffers: blocks
	time.Sleep(100 * time.Millisecond)
	h1.(interface{ CloseWrite() error }).CloseWrite() // as the hybrid socket passes a client's close on
	h1.Close()
	h2, err := b.Attach()
	if err != nil {
		t.Fatalf("attach after a refused transfer: %v", err)
	}
	defer h2.Close()
	go h2.Write([]byte("MARK"))
	readUntil(t, guest, "MARK")
	guest.Write([]byte("back"))
	readUntil(t, h2, "back")
}

// TestExclusiveStaleDetach: the forwarder noticing late that a holder left (its write
// failed) must not cut off the holder after it.
func TestExclusiveStaleDetach(t *testing.T) {
	host, guest := portPair(t)
	b := NewExclusive(host)
	h1, err := b.Attach()
	if err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	first := b.cur
	b.mu.Unlock()
	h1.Close()
	h2, err := b.Attach()
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	detached := make(chan struct{})
	go func() { b.detach(first); close(detached) }() // what run() does after a failed write to h1
	select {
	case <-detached:
	case <-time.After(2 * time.Second):
		t.Fatal("a stale detach waits on the next holder")
	}
	time.Sleep(150 * time.Millisecond) // past the cut-off a stale detach would apply
	guest.Write([]byte("to h2"))
	readUntil(t, h2, "to h2")
	go h2.Write([]byte("from h2"))
	readUntil(t, guest, "from h2")
}

// TestExclusiveDrainsWithoutHolder: what the guest sends while nobody holds the
// stream is dropped, and a holder gets what follows.
func TestExclusiveDrainsWithoutHolder(t *testing.T) {
	host, guest := portPair(t)
	b := NewExclusive(host)
	guest.Write(bytes.Repeat([]byte("junk"), 1<<16))
	time.Sleep(50 * time.Millisecond)
	h, err := b.Attach()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	guest.Write([]byte("fresh"))
	readUntil(t, h, "fresh")
}

// TestSpliceClientGoneWhileGuestStalls: a client that leaves while its bytes are stuck
// in front of a guest that stopped reading (a refused transfer) ends the splice; it
// used to wait in that write for ever, so the holder never hung up.
func TestSpliceClientGoneWhileGuestStalls(t *testing.T) {
	client, clientPeer := portPair(t)
	guestSide, guest := portPair(t)
	_ = guest // never reads
	done := make(chan struct{})
	go func() { Splice(client, guestSide, client); close(done) }()
	go clientPeer.Write(bytes.Repeat([]byte("x"), 16<<20)) // blocks: nobody reads
	time.Sleep(200 * time.Millisecond)
	clientPeer.Close()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("the splice still waits on a guest that does not read, for a client that left")
	}
}

// TestSpliceHalfCloseKept: a client that only stops sending still gets the answer,
// however long the guest takes to read.
func TestSpliceHalfCloseKept(t *testing.T) {
	client, clientPeer := portPair(t)
	guestSide, guest := portPair(t)
	go Splice(client, guestSide, client)
	go func() {
		clientPeer.Write(bytes.Repeat([]byte("q"), 4<<20))
		clientPeer.(interface{ CloseWrite() error }).CloseWrite()
	}()
	time.Sleep(600 * time.Millisecond) // the guest is slow: writes stall past stallCheck
	n, _ := io.Copy(io.Discard, io.LimitReader(guest, 4<<20))
	guest.Write([]byte("answer"))
	guest.(interface{ CloseWrite() error }).CloseWrite()
	got, err := io.ReadAll(clientPeer)
	if n != 4<<20 || string(got) != "answer" {
		t.Fatalf("guest got %d bytes; client got %q %v", n, got, err)
	}
}
