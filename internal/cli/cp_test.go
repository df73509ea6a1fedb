package cli

import "testing"

func TestParseCpArg(t *testing.T) {
	tests := []struct {
		in       string
		vm, path string
	}{
		{"web:/srv", "web", "/srv"},
		{"web:srv", "web", "/srv"},
		{"web:", "web", "/"},
		{"./a:b", "", "./a:b"},
		{"/tmp/x:y", "", "/tmp/x:y"},
		{"file.txt", "", "file.txt"},
		{"Bad_Name:/x", "", "Bad_Name:/x"},
		{":x", "", ":x"},
	}
	for _, tc := range tests {
		got := parseCpArg(tc.in)
		if got.vm != tc.vm || got.path != tc.path {
			t.Errorf("%q: %+v", tc.in, got)
		}
	}
}
