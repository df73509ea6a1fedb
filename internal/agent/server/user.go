package server

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// account is who a process runs as.
type account struct {
	uid, gid uint32
	groups   []uint32
	name     string
	home     string
}

// lookupUser resolves "name", "uid", "name:group" or "uid:gid" against the guest's
// /etc/passwd and /etc/group (a static agent has no libc NSS; files are what the
// default image and most microVM guests use).
func lookupUser(spec, passwdPath, groupPath string) (account, error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	var acc account
	found := false
	if err := eachLine(passwdPath, func(f []string) bool {
		if len(f) < 7 || (f[0] != userPart && f[2] != userPart) {
			return true
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			return true
		}
		acc = account{uid: uint32(uid), gid: uint32(gid), name: f[0], home: f[5]}
		found = true
		return false
	}); err != nil && !os.IsNotExist(err) {
		return acc, err
	}
	if !found {
		uid, err := strconv.ParseUint(userPart, 10, 32)
		if err != nil {
			return acc, fmt.Errorf("user %q not found in %s", userPart, passwdPath)
		}
		acc = account{uid: uint32(uid), gid: uint32(uid), home: "/"} // a bare uid, as docker allows
	}
	if hasGroup {
		gid, ok := groupID(groupPart, groupPath)
		if !ok {
			return acc, fmt.Errorf("group %q not found in %s", groupPart, groupPath)
		}
		acc.gid = gid
	}
	if acc.name != "" {
		_ = eachLine(groupPath, func(f []string) bool {
			if len(f) < 4 {
				return true
			}
			for _, m := range strings.Split(f[3], ",") {
				if m == acc.name {
					if gid, err := strconv.ParseUint(f[2], 10, 32); err == nil && uint32(gid) != acc.gid {
						acc.groups = append(acc.groups, uint32(gid))
					}
				}
			}
			return true
		})
	}
	return acc, nil
}

func groupID(spec, groupPath string) (uint32, bool) {
	var gid uint32
	found := false
	_ = eachLine(groupPath, func(f []string) bool {
		if len(f) >= 3 && (f[0] == spec || f[2] == spec) {
			if v, err := strconv.ParseUint(f[2], 10, 32); err == nil {
				gid, found = uint32(v), true
				return false
			}
		}
		return true
	})
	if !found {
		if v, err := strconv.ParseUint(spec, 10, 32); err == nil {
			return uint32(v), true
		}
	}
	return gid, found
}

// eachLine calls fn with the colon-separated fields of each line until it returns false.
func eachLine(path string, fn func([]string) bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !fn(strings.Split(line, ":")) {
			break
		}
	}
	return sc.Err()
}

func (a account) credential() *syscall.Credential {
	return &syscall.Credential{Uid: a.uid, Gid: a.gid, Groups: a.groups}
}
