package client_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-dev/mvm/internal/agent/client"
	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/archive"
)

var testToken = []byte("tok-0123456789abcdef")

// fakeAgent answers one copy_out with a source description and tar stream of its
// choosing, as a guest whose root holds the token can.
func fakeAgent(t *testing.T, src proto.CopySource, packed string) client.DialFunc {
	t.Helper()
	var tarball bytes.Buffer
	hw := archive.NewHashingWriter(&tarball)
	if _, _, err := archive.Pack(context.Background(), hw, packed); err != nil {
		t.Fatal(err)
	}
	return func(ctx context.Context) (net.Conn, error) {
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			pc := proto.NewConn(b)
			var au proto.Auth
			if pc.Expect(proto.TAuth, &au) != nil {
				return
			}
			if _, err := pc.Read(); err != nil { // the request
				return
			}
			_ = pc.WriteJSON(proto.TAuthOK, proto.AuthOK{Proto: proto.Version, AgentVersion: "evil", MAC: proto.AgentMAC(testToken, au.Nonce, nil)})
			_ = pc.WriteJSON(proto.TResponse, proto.Response{OK: true, Source: &src})
			_ = pc.WriteData(proto.TStdout, tarball.Bytes())
			_ = pc.WriteJSON(proto.TDone, proto.Done{Bytes: hw.N(), Digest: hw.Sum()})
		}()
		return a, nil
	}
}

// TestCopyOutIgnoresGuestNaming: the host decides the name and the contents-only rule
// from the path it asked for; a guest answering otherwise cannot plant files next to
// the destination it was given.
func TestCopyOutIgnoresGuestNaming(t *testing.T) {
	evil := t.TempDir()
	os.MkdirAll(filepath.Join(evil, ".ssh"), 0o700)
	os.WriteFile(filepath.Join(evil, ".ssh", "authorized_keys"), []byte("ssh-ed25519 AAAA attacker\n"), 0o600)
	bashrc := filepath.Join(t.TempDir(), ".bashrc")
	os.WriteFile(bashrc, []byte("evil\n"), 0o644)

	for _, tc := range []struct {
		name   string
		src    proto.CopySource
		packed string
	}{
		{"contents only", proto.CopySource{Base: "app.log", IsDir: true, ContentsOnly: true}, evil + "/."},
		{"other name", proto.CopySource{Base: ".bashrc"}, bashrc},
	} {
		t.Run(tc.name, func(t *testing.T) {
			home := t.TempDir() // say, /root
			os.WriteFile(filepath.Join(home, ".bashrc"), []byte("mine\n"), 0o644)
			cl := client.New(fakeAgent(t, tc.src, tc.packed), testToken)
			_, err := cl.CopyOut(context.Background(), "/var/log/app.log", home)
			if err == nil || !strings.Contains(err.Error(), "not what was asked for") {
				t.Errorf("hostile description accepted: %v", err)
			}
			if _, err := os.Stat(filepath.Join(home, ".ssh")); err == nil {
				t.Error("the guest planted .ssh in the destination")
			}
			if b, _ := os.ReadFile(filepath.Join(home, ".bashrc")); string(b) != "mine\n" {
				t.Errorf(".bashrc replaced: %q", b)
			}
		})
	}
}

// TestCopyOutHonestDescription: answers that agree with the path asked for are
// applied with docker cp's rules, contents-only included.
func TestCopyOutHonestDescription(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "conf")
	os.Mkdir(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "a"), []byte("A"), 0o644)
	for _, tc := range []struct {
		guest, packed, want string
		src                 proto.CopySource
	}{
		{"/etc/conf", dir, "conf/a", proto.CopySource{Base: "conf", IsDir: true}},
		{"/etc/conf/.", dir + "/.", "a", proto.CopySource{Base: "conf", IsDir: true, ContentsOnly: true}},
		{"etc/conf/", dir, "conf/a", proto.CopySource{Base: "conf", IsDir: true}},
	} {
		t.Run(tc.guest, func(t *testing.T) {
			dst := t.TempDir()
			cl := client.New(fakeAgent(t, tc.src, tc.packed), testToken)
			if _, err := cl.CopyOut(context.Background(), tc.guest, dst); err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(filepath.Join(dst, tc.want)); err != nil || string(b) != "A" {
				t.Fatalf("%s: %q %v", tc.want, b, err)
			}
		})
	}
}

// acceptAgent authenticates one connection as an agent would and returns its request.
func acceptAgent(t *testing.T, c net.Conn) (*proto.Conn, proto.Request) {
	pc := proto.NewConn(c)
	var au proto.Auth
	if err := pc.Expect(proto.TAuth, &au); err != nil {
		t.Error(err)
		return pc, proto.Request{}
	}
	var req proto.Request
	if err := pc.Expect(proto.TRequest, &req); err != nil {
		t.Error(err)
	}
	_ = pc.WriteJSON(proto.TAuthOK, proto.AuthOK{Proto: proto.Version, AgentVersion: "fake", MAC: proto.AgentMAC(testToken, au.Nonce, nil)})
	return pc, req
}

// TestCopyInRefusedWhileSending: an agent that refuses a copy in while the host's
// sender is blocked on it (it stopped reading) gets its answer reported at once; the
// client used to wait for the sender, which nobody would ever unblock.
func TestCopyInRefusedWhileSending(t *testing.T) {
	src := filepath.Join(t.TempDir(), "big")
	os.WriteFile(src, bytes.Repeat([]byte("y"), 4<<20), 0o644)
	dial := func(ctx context.Context) (net.Conn, error) {
		a, b := net.Pipe() // no buffer: the sender blocks as soon as the agent stops reading
		go func() {
			pc, _ := acceptAgent(t, b)
			_ = pc.WriteJSON(proto.TResponse, proto.Response{OK: true})
			time.Sleep(200 * time.Millisecond)
			_ = pc.WriteJSON(proto.TResponse, proto.Response{Error: "no space left on device"})
			// Neither reads nor closes: an agent busy elsewhere.
		}()
		return a, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err := client.New(dial, testToken).CopyIn(ctx, src, "/tmp/x")
	if err == nil || !strings.Contains(err.Error(), "no space left") || time.Since(start) > 2*time.Second {
		t.Fatalf("refused copy in: %v after %v", err, time.Since(start))
	}
}

// TestCopyInDeclinedBulkReleased: when the agent does not take the bulk channel for a
// copy in, the client lets go of it at once, so another copy can have it.
func TestCopyInDeclinedBulkReleased(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	bulkConns := make(chan net.Conn, 1)
	released := make(chan bool, 1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { // the hybrid socket: "CONNECT <port>" then the stream
				line := make([]byte, 0, 16)
				one := make([]byte, 1)
				for len(line) < 16 {
					if _, err := c.Read(one); err != nil || one[0] == '\n' {
						break
					}
					line = append(line, one[0])
				}
				c.Write([]byte("OK 1\n"))
				if string(line) == "CONNECT 1025" {
					bulkConns <- c
					return
				}
				defer c.Close()
				pc, _ := acceptAgent(t, c)
				_ = pc.WriteJSON(proto.TResponse, proto.Response{OK: true}) // no BulkID: frames
				bc := <-bulkConns
				bc.SetReadDeadline(time.Now().Add(time.Second))
				_, err := bc.Read(one)
				released <- errors.Is(err, io.EOF)
				for { // the framed stream, up to Done
					f, err := pc.Read()
					if err != nil || f.Type == proto.TDone {
						break
					}
				}
				_ = pc.WriteJSON(proto.TResponse, proto.Response{OK: true})
			}()
		}
	}()
	src := filepath.Join(t.TempDir(), "f")
	os.WriteFile(src, []byte("hello"), 0o644)
	if _, err := client.NewHybrid(sock, testToken).CopyIn(context.Background(), src, "/tmp/f"); err != nil {
		t.Fatal(err)
	}
	if !<-released {
		t.Fatal("the declined bulk channel was held during the framed copy")
	}
}
