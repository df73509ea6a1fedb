package runtime

import "testing"

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
