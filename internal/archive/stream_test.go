package archive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// send packs src into w followed by the trailer a real sender would append:
// the stream's SHA-256 and length.
func send(ctx context.Context, w io.Writer, src string) error {
	hw := NewHashingWriter(w)
	if _, _, err := Pack(ctx, hw, src); err != nil {
		return err
	}
	if _, err := w.Write(hw.Sum()); err != nil {
		return err
	}
	return binary.Write(w, binary.BigEndian, hw.N())
}

// receive unpacks from r and checks the trailer that follows the archive.
func receive(ctx context.Context, r io.Reader, dest string, info SourceInfo) (Result, error) {
	hr := NewHashingReader(r)
	res, err := Unpack(ctx, hr, dest, info, UnpackOptions{})
	if err != nil {
		return res, err
	}
	sum := make([]byte, 8)
	var n int64
	if _, err := io.ReadFull(r, sum); err != nil {
		return res, fmt.Errorf("read trailer: %w", err)
	}
	if err := binary.Read(r, binary.BigEndian, &n); err != nil {
		return res, fmt.Errorf("read trailer: %w", err)
	}
	return res, hr.Verify(sum, n)
}

func TestLargeFileThroughPipe(t *testing.T) {
	if testing.Short() {
		t.Skip("64 MiB")
	}
	const size = 64 << 20
	tmp := t.TempDir()
	src := filepath.Join(tmp, "big")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.NewChaCha8([32]byte{1}), size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	want := h.Sum(nil)

	info, err := Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(send(ctx, pw, src)) }()
	dest := filepath.Join(tmp, "copy")
	res, err := receive(ctx, pr, dest, info)
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes != size || res.Entries != 1 {
		t.Errorf("result %+v, want 1 entry of %d bytes", res, size)
	}
	g, err := os.Open(dest)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	h.Reset()
	if _, err := io.Copy(h, g); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(h.Sum(nil), want) {
		t.Error("copy differs from source")
	}
}

func TestHashDetectsDamage(t *testing.T) {
	tmp := t.TempDir()
	writeTree(t, tmp, tree{"d/a": strings.Repeat("a", 5000), "d/b": "b"})
	src := filepath.Join(tmp, "d")
	info, _ := Stat(src)
	var buf bytes.Buffer
	if err := send(context.Background(), &buf, src); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	trailer := len(good) - 8 - 8
	for _, tc := range []struct {
		name   string
		stream func() []byte
	}{
		{"flipped content byte", func() []byte {
			b := bytes.Clone(good)
			i := bytes.Index(b, []byte("aaaa"))
			b[i] = 'X'
			return b
		}},
		{"wrong length in trailer", func() []byte {
			b := bytes.Clone(good)
			b[len(b)-1]++
			return b
		}},
		{"wrong digest in trailer", func() []byte {
			b := bytes.Clone(good)
			b[trailer]++
			return b
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := receive(context.Background(), bytes.NewReader(tc.stream()), filepath.Join(t.TempDir(), "x"), info)
			if !errors.Is(err, ErrStreamCorrupt) {
				t.Errorf("got %v, want ErrStreamCorrupt", err)
			}
		})
	}
	t.Run("intact", func(t *testing.T) {
		if _, err := receive(context.Background(), bytes.NewReader(good), filepath.Join(t.TempDir(), "x"), info); err != nil {
			t.Error(err)
		}
	})
}

// cancelAfter cancels ctx once n bytes have passed.
type cancelAfter struct {
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) count(n int) {
	if c.n -= n; c.n <= 0 {
		c.cancel()
	}
}

type cancelWriter struct {
	*cancelAfter
	w io.Writer
}

func (c cancelWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.count(n)
	return n, err
}

type cancelReader struct {
	*cancelAfter
	r io.Reader
}

func (c cancelReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.count(n)
	return n, err
}

func TestContextCancellation(t *testing.T) {
	tmp := t.TempDir()
	spec := tree{"d/big": strings.Repeat("x", 4<<20)}
	for i := range 50 {
		spec[fmt.Sprintf("d/f%02d", i)] = strings.Repeat("y", 1000)
	}
	writeTree(t, tmp, spec)
	src := filepath.Join(tmp, "d")
	info, _ := Stat(src)
	var packed bytes.Buffer
	if _, _, err := Pack(context.Background(), &packed, src); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name  string
		after int // bytes before cancel; 0 cancels up front
	}{
		{"before start", 0},
		{"inside big file", 1 << 20},
		{"between small files", packed.Len() - 20_000},
	} {
		t.Run("pack "+tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ca := &cancelAfter{n: tc.after, cancel: cancel}
			if tc.after == 0 {
				cancel()
			}
			_, _, err := Pack(ctx, cancelWriter{ca, io.Discard}, src)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("got %v, want context.Canceled", err)
			}
		})
		t.Run("unpack "+tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ca := &cancelAfter{n: tc.after, cancel: cancel}
			if tc.after == 0 {
				cancel()
			}
			out := t.TempDir()
			_, err := Unpack(ctx, cancelReader{ca, bytes.NewReader(packed.Bytes())}, out, info, UnpackOptions{})
			if !errors.Is(err, context.Canceled) {
				t.Errorf("got %v, want context.Canceled", err)
			}
			// No temporary or partial files survive.
			for name, content := range readTree(t, out) {
				if strings.Contains(name, ".mvmcp-") || (content != "" && content != spec[name]) {
					t.Errorf("left %s (%d bytes)", name, len(content))
				}
			}
		})
	}
}

// TestPackContentHook: a sender that writes contents itself produces the same stream.
func TestPackContentHook(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "d", "e"), 0o755)
	os.WriteFile(filepath.Join(dir, "d", "a"), bytes.Repeat([]byte("a"), 1000), 0o644)
	os.WriteFile(filepath.Join(dir, "d", "e", "b"), bytes.Repeat([]byte("b"), 70000), 0o644)
	os.WriteFile(filepath.Join(dir, "d", "empty"), nil, 0o644)
	var plain, hooked bytes.Buffer
	if _, _, err := Pack(context.Background(), &plain, filepath.Join(dir, "d")); err != nil {
		t.Fatal(err)
	}
	_, res, err := PackWith(context.Background(), &hooked, filepath.Join(dir, "d"), PackOptions{
		Content: func(f *os.File, size int64) error {
			_, err := io.CopyN(&hooked, f, size)
			return err
		}})
	if err != nil || res.Bytes != 71000 {
		t.Fatal(res, err)
	}
	if !bytes.Equal(plain.Bytes(), hooked.Bytes()) {
		t.Fatal("streams differ")
	}
}
