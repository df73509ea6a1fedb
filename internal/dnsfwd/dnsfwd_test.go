package dnsfwd

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
	"time"
)

func TestHostResolvers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	conf := "# comment\nnameserver 127.0.0.53\nnameserver ::1\nsearch example\nnameserver bogus\nnameserver\n"
	if err := os.WriteFile(p, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	got := HostResolvers(p)
	want := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.53:53"), netip.MustParseAddrPort("[::1]:53")}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if HostResolvers(filepath.Join(t.TempDir(), "missing")) != nil {
		t.Error("a missing file gives resolvers")
	}
}

func TestListenNeedsUpstream(t *testing.T) {
	if _, err := Listen(context.Background(), netip.MustParseAddr("127.0.0.1"), nil, slog.Default()); err == nil {
		t.Error("no upstream accepted")
	}
}

// upstream answers every UDP datagram and TCP message with "re:" and the query.
func upstream(t *testing.T) netip.AddrPort {
	t.Helper()
	u, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := u.LocalAddr().(*net.UDPAddr).Port
	l, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", itoa(port)))
	if err != nil {
		t.Skipf("tcp port %d taken: %v", port, err)
	}
	t.Cleanup(func() { u.Close(); l.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := u.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = u.WriteTo(append([]byte("re:"), buf[:n]...), from)
		}
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var n uint16
				if binary.Read(c, binary.BigEndian, &n) != nil {
					return
				}
				q := make([]byte, n)
				if _, err := io.ReadFull(c, q); err != nil {
					return
				}
				a := append([]byte("re:"), q...)
				_ = binary.Write(c, binary.BigEndian, uint16(len(a)))
				_, _ = c.Write(a)
			}()
		}
	}()
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestRelay(t *testing.T) {
	// A dead upstream first: the forwarder goes on to the next one.
	dead := netip.MustParseAddrPort("127.0.0.1:1")
	f, err := Listen(context.Background(), netip.MustParseAddr("127.0.0.1"), []netip.AddrPort{dead, upstream(t)}, slog.Default())
	if err != nil {
		t.Skipf("cannot bind port 53 here: %v", err)
	}
	defer f.Close()
	go f.Serve()

	c, err := net.Dial("udp4", "127.0.0.1:53")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("q1")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "re:q1" {
		t.Fatalf("udp: %q, %v", buf[:n], err)
	}

	tc, err := net.Dial("tcp4", "127.0.0.1:53")
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	_ = binary.Write(tc, binary.BigEndian, uint16(2))
	_, _ = tc.Write([]byte("q2"))
	var m uint16
	if err := binary.Read(tc, binary.BigEndian, &m); err != nil {
		t.Fatal(err)
	}
	a := make([]byte, m)
	if _, err := io.ReadFull(tc, a); err != nil || string(a) != "re:q2" {
		t.Fatalf("tcp: %q, %v", a, err)
	}
}
