package supervisor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-dev/mvm/internal/vm"
)

func TestRotatingLogBounded(t *testing.T) {
	dir := t.TempDir()
	p, old := filepath.Join(dir, "console.log"), filepath.Join(dir, "console.log.1")
	l, err := openRotatingLog(p, old, 100)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		l.Write([]byte("0123456789\n"))
	}
	l.Close()
	a, _ := os.Stat(p)
	b, _ := os.Stat(old)
	if a.Size() > 100 || b.Size() > 100 {
		t.Fatalf("log not bounded: %d + %d", a.Size(), b.Size())
	}
	cur, _ := os.ReadFile(p)
	if !strings.HasSuffix(string(cur), "0123456789\n") {
		t.Fatal("latest output lost")
	}
}

func TestContractArgs(t *testing.T) {
	r := vm.Record{Spec: vm.Spec{Name: "web"}, IP: "10.0.0.2/24", Gateway: "10.0.0.1"}
	got := strings.Join(ContractArgs(r), " ")
	for _, want := range []string{"console=ttyS0", "panic=1", "net.ifnames=0", "mvm.ip=10.0.0.2/24", "mvm.gw=10.0.0.1", "mvm.hostname=web"} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in %s", want, got)
		}
	}
	if strings.Contains(strings.Join(ContractArgs(vm.Record{Spec: vm.Spec{Name: "x"}}), " "), "mvm.ip") {
		t.Error("mvm.ip without an address")
	}
}
