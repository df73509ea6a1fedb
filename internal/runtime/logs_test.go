package runtime

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTailLines(t *testing.T) {
	in := []byte("a\nb\nc\n")
	tests := []struct {
		n    int
		want string
	}{{-1, "a\nb\nc\n"}, {0, ""}, {1, "c\n"}, {2, "b\nc\n"}, {5, "a\nb\nc\n"}}
	for _, tc := range tests {
		if got := string(tailLines(in, tc.n)); got != tc.want {
			t.Errorf("n=%d: %q", tc.n, got)
		}
	}
	if got := string(tailLines([]byte("x\ny"), 1)); got != "y" {
		t.Errorf("no trailing newline: %q", got)
	}
}

// A dead supervisor's log is quoted from its end, or from where a panic begins.
func TestLogTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "supervisor.log")
	cases := []struct{ log, want string }{
		{"a\nb\nc\n", "  b\n  c"},
		{"x\npanic: boom\n\ngoroutine 1\nf\ng\n", "  panic: boom\n  \n  goroutine 1"},
		{"not a panic: here\ny\nz\n", "  y\n  z"},
	}
	for _, tc := range cases {
		if err := os.WriteFile(p, []byte(tc.log), 0o600); err != nil {
			t.Fatal(err)
		}
		n := 2
		if strings.Contains(tc.log, "\npanic: ") {
			n = 3
		}
		if got := logTail(p, n); got != tc.want {
			t.Errorf("logTail(%q, %d) = %q, want %q", tc.log, n, got, tc.want)
		}
	}
	if got := logTail(filepath.Join(t.TempDir(), "missing"), 3); !strings.Contains(got, "no such file") {
		t.Errorf("missing log: %q", got)
	}
}
