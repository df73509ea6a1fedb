package integration

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// outside is a network namespace standing in for the world beyond the host: joined
// to the test's namespace by a veth pair, with TCP services and a DNS server. No test
// traffic leaves the namespaces the test made.
type outside struct {
	ns   string
	addr string // 10.250.0.2

	mu      sync.Mutex
	queries []string // what serveDNS was asked, for a failure's message
}

// dnsQueries are the queries the outside's DNS server has seen: "type name".
func (o *outside) dnsQueries() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.queries)
}

func newOutside(t *testing.T, e *env) *outside {
	t.Helper()
	o := &outside{ns: e.ns + "-out", addr: "10.250.0.2"}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	run("ip", "netns", "add", o.ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", o.ns).Run() })
	run("ip", "netns", "exec", e.ns, "ip", "link", "add", "vo", "type", "veth", "peer", "name", "vi", "netns", o.ns)
	run("ip", "netns", "exec", e.ns, "ip", "addr", "add", "10.250.0.1/24", "dev", "vo")
	run("ip", "netns", "exec", e.ns, "ip", "link", "set", "vo", "up")
	run("ip", "netns", "exec", o.ns, "ip", "addr", "add", o.addr+"/24", "dev", "vi")
	run("ip", "netns", "exec", o.ns, "ip", "link", "set", "vi", "up")
	run("ip", "netns", "exec", o.ns, "ip", "link", "set", "lo", "up")
	return o
}

// serveTCP answers every connection on port with a line naming the port.
func (o *outside) serveTCP(t *testing.T, port int) {
	t.Helper()
	var l net.Listener
	err := inNamedNS(o.ns, func() error {
		var err error
		l, err = net.Listen("tcp", fmt.Sprintf("%s:%d", o.addr, port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "outside-%d\n", port)
			c.Close()
		}
	}()
}

// serveDNS answers A queries for the names in records (and NXDOMAIN otherwise).
func (o *outside) serveDNS(t *testing.T, records map[string]string) {
	t.Helper()
	var pc net.PacketConn
	err := inNamedNS(o.ns, func() error {
		var err error
		pc, err = net.ListenPacket("udp", o.addr+":53")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			o.mu.Lock()
			o.queries = append(o.queries, dnsQuestion(buf[:n]))
			o.mu.Unlock()
			if resp := dnsAnswer(buf[:n], records); resp != nil {
				pc.WriteTo(resp, from)
			}
		}
	}()
}

// parseQuestion reads a one-question query's name and type, and where the
// question ends; ok is false for a malformed query.
func parseQuestion(q []byte) (name string, qtype uint16, end int, ok bool) {
	if len(q) < 12 {
		return "", 0, 0, false
	}
	var labels []string
	i := 12
	for i < len(q) && q[i] != 0 {
		l := int(q[i])
		if i+1+l > len(q) {
			return "", 0, 0, false
		}
		labels = append(labels, string(q[i+1:i+1+l]))
		i += 1 + l
	}
	end = i + 5 // the name's final zero, QTYPE, QCLASS
	if end > len(q) {
		return "", 0, 0, false
	}
	return strings.Join(labels, "."), binary.BigEndian.Uint16(q[i+1:]), end, true
}

// dnsQuestion describes a query for a failure's message: "A name", "AAAA name".
func dnsQuestion(q []byte) string {
	name, qtype, _, ok := parseQuestion(q)
	if !ok {
		return "malformed"
	}
	return map[uint16]string{1: "A", 28: "AAAA"}[qtype] + fmt.Sprintf("(%d) %s", qtype, name)
}

// dnsAnswer builds the answer to a one-question query: just enough DNS for the test.
func dnsAnswer(q []byte, records map[string]string) []byte {
	name, qtype, end, ok := parseQuestion(q)
	if !ok {
		return nil
	}
	resp := append([]byte(nil), q[:end]...)
	resp[2] |= 0x80                          // a response
	resp[3] = 0x80                           // recursion available, no error
	binary.BigEndian.PutUint16(resp[6:], 0)  // answers
	binary.BigEndian.PutUint16(resp[8:], 0)  // authority
	binary.BigEndian.PutUint16(resp[10:], 0) // additional
	ip, ok := records[name]
	if !ok {
		resp[3] |= 3 // NXDOMAIN
		return resp
	}
	if qtype != 1 {
		return resp // no AAAA and so on: an empty answer
	}
	binary.BigEndian.PutUint16(resp[6:], 1)
	resp = append(resp, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4)
	return append(resp, net.ParseIP(ip).To4()...)
}

// TestNetworking observes the reachability matrix of three networks (default, a named
// NAT network with its own DNS, an isolated network without NAT), egress policies, the
// host's own services, DNS, network removal, and cleanup after a killed supervisor.
func TestNetworking(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	out := newOutside(t, e)
	for _, p := range []int{8443, 9443, 7443} {
		out.serveTCP(t, p)
	}
	out.serveDNS(t, map[string]string{"db.internal": out.addr, "svc.outside": out.addr})
	// A service of the host itself, in the test's namespace: no VM may reach it.
	var hostSvc net.Listener
	if err := e.inNSDo(func() error {
		var err error
		hostSvc, err = net.Listen("tcp", "0.0.0.0:7777")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer hostSvc.Close()
	go func() {
		for {
			c, err := hostSvc.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "host-service")
			c.Close()
		}
	}()

	fwd := func() string { v, _ := e.inNS("cat", "/proc/sys/net/ipv4/ip_forward"); return strings.TrimSpace(v) }
	if fwd() != "0" {
		t.Fatalf("a fresh namespace forwards: %s", fwd())
	}
	e.must("network", "create", "backend", "--subnet", "10.42.0.0/24", "--dns", out.addr)
	if fwd() != "1" {
		t.Error("forwarding not enabled for a NAT network")
	}
	e.must("network", "create", "iso", "--isolated", "--no-nat")
	if r := e.run("network", "create", "clash", "--subnet", "10.42.0.0/25"); r.code == 0 || !strings.Contains(r.stderr, "overlaps") {
		t.Errorf("overlapping subnet: %+v", r)
	}
	vms := [][]string{
		{"a1"}, {"a2"},
		{"b1", "--network", "backend"},
		{"i1", "--network", "iso"}, {"i2", "--network", "iso"},
		{"job", "--network", "backend", "--egress", "deny"},
		{"crawler", "--network", "backend", "--egress", "allow=" + out.addr + ":8443,db.internal:9443"},
		{"pub", "--network", "backend", "-p", "18080:80"},
	}
	var wg sync.WaitGroup
	for _, v := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			args := append([]string{"up", "-d", "--memory", "160M", "--name"}, v...)
			if r := e.run(args...); r.code != 0 {
				t.Errorf("up %v: %s", v, r.stderr)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	ip := map[string]string{}
	for _, v := range e.ls(false) {
		ip[v.Name] = v.IP
	}
	gw := func(n string) string { // the gateway is .1 of the VM's /24
		return ip[n][:strings.LastIndexByte(ip[n], '.')] + ".1"
	}
	ping := func(from, to string) bool {
		return e.exec(from, "ping", "-c", "1", "-W", "2", to).code == 0
	}
	tcp := func(from, host string, port int) bool {
		r := e.exec(from, "sh", "-c", fmt.Sprintf("echo | nc -w 3 %s %d", host, port))
		return r.code == 0 && strings.Contains(r.stdout, "-")
	}
	type check struct {
		what string
		got  bool
		want bool
	}
	checks := []check{
		{"a1 -> a2 (same network)", ping("a1", ip["a2"]), true},
		{"a1 -> b1 (other network)", ping("a1", ip["b1"]), false},
		{"b1 -> a1 (other network)", ping("b1", ip["a1"]), false},
		{"i1 -> i2 (isolated network)", ping("i1", ip["i2"]), false},
		{"i1 -> its gateway", ping("i1", gw("i1")), true},
		{"i1 -> a1", ping("i1", ip["a1"]), false},
		{"a1 -> outside (NAT)", tcp("a1", out.addr, 8443), true},
		{"b1 -> outside (NAT)", tcp("b1", out.addr, 8443), true},
		{"i1 -> outside (no NAT)", tcp("i1", out.addr, 8443), false},
		{"a1 -> host service via gateway", tcp("a1", gw("a1"), 7777), false},
		{"a1 -> host service via the outside link", tcp("a1", "10.250.0.1", 7777), false},
		{"job (deny) -> outside", tcp("job", out.addr, 8443), false},
		{"job (deny) -> b1 (same network)", ping("job", ip["b1"]), false},
		{"crawler -> allowed 8443", tcp("crawler", out.addr, 8443), true},
		{"crawler -> db.internal:9443 (resolved at start)", tcp("crawler", out.addr, 9443), true},
		{"crawler -> 7443 (not listed)", tcp("crawler", out.addr, 7443), false},
	}
	for _, n := range []string{"a1", "b1", "i1", "job"} {
		hostPing, _ := e.inNS("busybox", "ping", "-c", "1", "-W", "2", ip[n])
		checks = append(checks, check{"host -> " + n, strings.Contains(hostPing, "1 packets received"), true})
	}
	for _, c := range checks {
		t.Logf("%-48s %v", c.what, c.got)
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.what, c.got, c.want)
		}
	}
	// A published port of a VM on a network, from the host.
	e.mustExec("pub", "sh", "-c", "mkdir -p /srv && echo pub > /srv/index.html && httpd -p 80 -h /srv")
	if body, err := e.httpGet(18080); err != nil || body != "pub\n" {
		t.Errorf("published port: %q %v", body, err)
	}
	// DNS: the gateway forwards to the network's resolver, also for a VM whose egress is denied.
	for _, n := range []string{"b1", "job"} {
		var r result
		for try := 0; try < 3; try++ { // DNS over UDP may drop a datagram under load
			if r = e.exec(n, "nslookup", "svc.outside"); r.code == 0 && strings.Contains(r.stdout, out.addr) {
				break
			}
		}
		if r.code != 0 || !strings.Contains(r.stdout, out.addr) {
			t.Errorf("%s: nslookup: %+v\nqueries the outside's server saw: %v\nthe forwarders said:\n%s",
				n, r, out.dnsQueries(), e.supervisorLogLines("dns:", "b1", "job", "crawler", "pub"))
		}
	}
	var insp struct {
		EgressResolved []string `json:"egress_resolved"`
		Egress         string   `json:"egress"`
	}
	json.Unmarshal([]byte(e.must("inspect", "--json", "crawler")), &insp)
	if strings.Join(insp.EgressResolved, ",") != out.addr+":8443,"+out.addr+":9443" {
		t.Errorf("inspect egress: %+v", insp)
	}
	if !strings.Contains(e.must("ls"), "backend") {
		t.Error("ls does not show networks")
	}
	// A network in use cannot go; an unused one can, with its bridge.
	if r := e.run("network", "rm", "backend"); r.code == 0 || !strings.Contains(r.stderr, "in use") {
		t.Errorf("rm in use: %+v", r)
	}
	// SIGKILL of a supervisor: after the next command no TAP, rule or address of it remains.
	crawler := e.vm("crawler")
	if n := e.rulesMentioning(t, crawler.ID, "mvt"+crawler.ID); n == 0 {
		t.Fatal("no firewall rule names the running crawler: the check below would prove nothing")
	}
	e.killSupervisor("crawler", crawler.ID)
	// The next command after the supervisor and its QEMU are gone must repair.
	for deadline := time.Now().Add(10 * time.Second); len(pidOf("qemu-system.*"+e.root+"/vms/"+crawler.ID)) > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the killed supervisor's QEMU does not exit")
		}
	}
	e.must("ls") // reconciles
	if links, _ := e.inNS("ip", "-o", "link"); strings.Contains(links, "mvt"+crawler.ID) {
		t.Error("TAP of the killed VM remains")
	}
	if n := e.rulesMentioning(t, crawler.ID, "mvt"+crawler.ID); n != 0 {
		t.Errorf("%d firewall rules of the killed VM remain", n)
	}
	e.must("up", "-d", "--name", "reuse", "--network", "backend", "--memory", "160M")
	if got := e.vm("reuse").IP; got != crawler.IP {
		t.Errorf("address of the killed VM not released: %s then %s", crawler.IP, got)
	}
	e.must("down", "--all")
	e.must("network", "rm", "backend", "iso", "default")
	if links, _ := e.inNS("ip", "-o", "link"); strings.Contains(links, "mvn") || strings.Contains(links, "mvmbr") {
		t.Errorf("bridges left: %s", links)
	}
	if fwd() != "0" {
		t.Error("forwarding not restored once the last NAT network went")
	}
	if n := e.rulesMentioning(t, "", "mvmbr"); n != 0 {
		t.Errorf("%d rules left after every network went", n)
	}
}

// rulesMentioning counts mvm firewall rules and chains that name a VM id or interface.
func (e *env) rulesMentioning(t *testing.T, id, ifname string) int {
	t.Helper()
	n := 0
	err := e.inNSDo(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		chains, err := c.ListChains()
		if err != nil {
			return err
		}
		for _, ch := range chains {
			if !strings.HasPrefix(ch.Table.Name, "mvm") {
				continue
			}
			if strings.Contains(ch.Name, id) {
				n++
			}
			rules, err := c.GetRules(ch.Table, ch)
			if err != nil {
				return err
			}
			for _, r := range rules {
				for _, x := range r.Exprs {
					if cmp, ok := x.(*expr.Cmp); ok && strings.HasPrefix(string(cmp.Data), ifname) {
						n++
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
