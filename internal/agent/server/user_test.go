package server

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestLookupUser(t *testing.T) {
	dir := t.TempDir()
	passwd := filepath.Join(dir, "passwd")
	group := filepath.Join(dir, "group")
	os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"), 0o644)
	os.WriteFile(group, []byte("root:x:0:\nalice:x:1000:\nwheel:x:10:alice,bob\nnogroup:x:65534:\n"), 0o644)
	tests := []struct {
		spec string
		want account
		err  bool
	}{
		{"root", account{uid: 0, gid: 0, name: "root", home: "/root"}, false},
		{"alice", account{uid: 1000, gid: 1000, name: "alice", home: "/home/alice", groups: []uint32{10}}, false},
		{"1000", account{uid: 1000, gid: 1000, name: "alice", home: "/home/alice", groups: []uint32{10}}, false},
		{"nobody:wheel", account{uid: 65534, gid: 10, name: "nobody", home: "/nonexistent"}, false},
		{"4242", account{uid: 4242, gid: 4242, home: "/"}, false},
		{"4242:77", account{uid: 4242, gid: 77, home: "/"}, false},
		{"mallory", account{}, true},
		{"alice:nogroupname", account{}, true},
	}
	for _, tc := range tests {
		got, err := lookupUser(tc.spec, passwd, group)
		if (err != nil) != tc.err || (!tc.err && !reflect.DeepEqual(got, tc.want)) {
			t.Errorf("%q: got %+v, %v; want %+v", tc.spec, got, err, tc.want)
		}
	}
}
