package client_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
