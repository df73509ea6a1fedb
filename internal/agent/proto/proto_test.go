package proto

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
	"time"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	c := NewConn(&buf)
	if err := c.WriteJSON(TRequest, Request{Op: OpExec, Exec: &ExecRequest{Argv: []string{"true"}}}); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x"), MaxDataPayload+10)
	if err := c.WriteData(TStdout, big); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteEmpty(TStdinEOF); err != nil {
		t.Fatal(err)
	}
	var req Request
	if err := c.Expect(TRequest, &req); err != nil || req.Exec.Argv[0] != "true" {
		t.Fatalf("%v %+v", err, req)
	}
	f1, _ := c.Read()
	f2, _ := c.Read()
	if f1.Type != TStdout || len(f1.Payload) != MaxDataPayload || len(f2.Payload) != 10 {
		t.Fatalf("data frames split wrong: %d %d", len(f1.Payload), len(f2.Payload))
	}
	if f, err := c.Read(); err != nil || f.Type != TStdinEOF || len(f.Payload) != 0 {
		t.Fatalf("eof frame %v %v", f, err)
	}
	if _, err := c.Read(); !errors.Is(err, io.EOF) {
		t.Fatalf("want EOF, got %v", err)
	}
}

func TestReadFrameRejects(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"oversized control", AppendFrame(nil, TRequest, make([]byte, MaxControlPayload+1)), ErrFrameTooLarge},
		{"unknown type", []byte{0, 0, 0, 0, 99}, nil},
		{"truncated payload", []byte{0, 0, 0, 9, byte(TStdout), 1, 2}, io.ErrUnexpectedEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadFrame(bytes.NewReader(tc.in))
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestRemoteErrorDecoded(t *testing.T) {
	var buf bytes.Buffer
	c := NewConn(&buf)
	_ = c.WriteJSON(TError, Error{Code: ErrCodeAuth, Message: "nope"})
	var re *RemoteError
	if err := c.Expect(TAuthOK, nil); !errors.As(err, &re) || re.Code != ErrCodeAuth {
		t.Fatalf("got %v", err)
	}
}

func TestExecValidate(t *testing.T) {
	tests := []struct {
		req ExecRequest
		ok  bool
	}{
		{ExecRequest{Argv: []string{"ls"}}, true},
		{ExecRequest{}, false},
		{ExecRequest{Argv: []string{""}}, false},
		{ExecRequest{Argv: []string{"a\x00b"}}, false},
		{ExecRequest{Argv: []string{"ls"}, Env: []string{"NOEQUALS"}}, false},
		{ExecRequest{Argv: []string{"ls"}, Env: []string{"=x"}}, false},
		{ExecRequest{Argv: []string{"ls"}, TimeoutMs: -1}, false},
	}
	for _, tc := range tests {
		if err := tc.req.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: err=%v, want ok=%v", tc.req, err, tc.ok)
		}
	}
}

func TestAuthMACs(t *testing.T) {
	tok := []byte("0123456789abcdef")
	n, c := bytes.Repeat([]byte{1}, NonceLen), bytes.Repeat([]byte{2}, NonceLen)
	req := []byte(`{"op":"ping"}`)
	host := HostMAC(tok, n, 5, nil, req)
	if bytes.Equal(host, AgentMAC(tok, n, nil)) {
		t.Fatal("host and agent proofs must differ so one cannot be replayed as the other")
	}
	for name, other := range map[string][]byte{
		"other token":     HostMAC([]byte("other-token-xxxxx"), n, 5, nil, req),
		"other time":      HostMAC(tok, n, 6, nil, req),
		"other request":   HostMAC(tok, n, 5, nil, []byte(`{"op":"poweroff"}`)),
		"with challenge":  HostMAC(tok, n, 5, c, req),
		"nonce/challenge": HostMAC(tok, c, 5, n, req),
	} {
		if VerifyMAC(host, other) {
			t.Errorf("%s: MAC unchanged", name)
		}
	}
}

func TestReplayGuard(t *testing.T) {
	g := NewReplayGuard(2)
	now := time.Unix(1000, 0)
	n := func(b byte) []byte { return bytes.Repeat([]byte{b}, NonceLen) }
	tests := []struct {
		name  string
		nonce []byte
		host  time.Time
		at    time.Time
		want  bool
	}{
		{"fresh", n(1), now, now, true},
		{"replayed", n(1), now, now, false},
		{"host clock behind", n(2), now.Add(-ClockWindow - time.Second), now, false},
		{"host clock ahead", n(3), now.Add(ClockWindow + time.Second), now, false},
		{"second fresh", n(4), now, now, true},
		{"guard full", n(5), now, now, false},
		{"full but expired entries purged", n(6), now.Add(3 * ClockWindow), now.Add(3 * ClockWindow), true},
		{"short nonce", []byte{1}, now, now, false},
	}
	for _, tc := range tests {
		if got := g.Fresh(tc.nonce, tc.host.UnixNano(), tc.at); got != tc.want {
			t.Errorf("%s: got %v", tc.name, got)
		}
	}
}

// FuzzReadFrame feeds arbitrary bytes, as a hostile peer could, to the frame decoder
// and the request decoder behind it.
func FuzzReadFrame(f *testing.F) {
	f.Add(AppendFrame(nil, TRequest, []byte(`{"op":"exec","exec":{"argv":["ls"]}}`)))
	f.Add(AppendFrame(nil, TStdout, []byte("data")))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 4})
	f.Add(AppendFrame(nil, TWindow, []byte(`{"bytes":65536}`)))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		for {
			fr, err := ReadFrame(r)
			if err != nil {
				return
			}
			if len(fr.Payload) > fr.Type.MaxPayload() {
				t.Fatalf("frame over limit accepted: %d", len(fr.Payload))
			}
			var req Request
			if Decode(fr, TRequest, &req) == nil && req.Exec != nil {
				_ = req.Exec.Validate()
			}
			var w Window
			if Decode(fr, TWindow, &w) == nil && w.Validate() == nil && (w.Bytes <= 0 || w.Bytes > StdinWindow) {
				t.Fatalf("window update of %d accepted", w.Bytes)
			}
		}
	})
}

// FuzzRequestJSON checks that no request body makes validation panic or accept a NUL.
func FuzzRequestJSON(f *testing.F) {
	f.Add([]byte(`{"op":"exec","exec":{"argv":["sh","-c","x"],"env":["A=b"],"timeout_ms":5}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var req Request
		if json.Unmarshal(b, &req) != nil || req.Exec == nil {
			return
		}
		if req.Exec.Validate() == nil {
			for _, a := range req.Exec.Argv {
				if bytes.IndexByte([]byte(a), 0) >= 0 {
					t.Fatal("NUL accepted")
				}
			}
		}
	})
}
