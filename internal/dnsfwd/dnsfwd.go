// Package dnsfwd is the DNS service mvm provides on each network's gateway: it relays
// guests' queries, over UDP and TCP, to the network's resolvers (or the host's own,
// which a guest could not reach directly, such as a resolver on the host's loopback).
// Every VM's supervisor runs one on the shared gateway address with SO_REUSEPORT, so
// the service lives exactly as long as some VM of the network does.
package dnsfwd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// HostResolvers reads the nameservers of the host's resolv.conf.
func HostResolvers(path string) []netip.AddrPort {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []netip.AddrPort
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if a, err := netip.ParseAddr(fields[1]); err == nil {
				out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
			}
		}
	}
	return out
}

func reusePort(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// maxInFlight bounds the queries (UDP) and connections (TCP) relayed at once, so a
// guest flooding its gateway costs the host a bounded amount of memory; beyond it
// queries are dropped, which DNS clients answer by retrying.
const maxInFlight = 128

// Forwarder relays DNS for one gateway address.
type Forwarder struct {
	udp       net.PacketConn
	tcp       net.Listener
	upstreams []netip.AddrPort
	log       *slog.Logger
	udpSlots  chan struct{}
	tcpSlots  chan struct{}
}

// Listen binds addr:53 (UDP and TCP).
func Listen(ctx context.Context, addr netip.Addr, upstreams []netip.AddrPort, log *slog.Logger) (*Forwarder, error) {
	if len(upstreams) == 0 {
		return nil, errors.New("dns: no upstream resolver (give the network --dns, or give the host a resolv.conf)")
	}
	lc := net.ListenConfig{Control: reusePort}
	hp := netip.AddrPortFrom(addr, 53).String()
	u, err := lc.ListenPacket(ctx, "udp4", hp)
	if err != nil {
		return nil, fmt.Errorf("dns: listen on %s: %w", hp, err)
	}
	t, err := lc.Listen(ctx, "tcp4", hp)
	if err != nil {
		u.Close()
		return nil, fmt.Errorf("dns: listen on %s: %w", hp, err)
	}
	return &Forwarder{udp: u, tcp: t, upstreams: upstreams, log: log,
		udpSlots: make(chan struct{}, maxInFlight), tcpSlots: make(chan struct{}, maxInFlight)}, nil
}

// Serve relays until Close.
func (f *Forwarder) Serve() {
	go f.serveTCP()
	buf := make([]byte, 65535)
	for {
		n, from, err := f.udp.ReadFrom(buf)
		if err != nil {
			return
		}
		select {
		case f.udpSlots <- struct{}{}:
		default:
			continue
		}
		q := append([]byte(nil), buf[:n]...)
		go func() {
			defer func() { <-f.udpSlots }()
			f.relayUDP(q, from)
		}()
	}
}

// Close stops the forwarder.
func (f *Forwarder) Close() error {
	return errors.Join(f.udp.Close(), f.tcp.Close())
}

func (f *Forwarder) relayUDP(q []byte, from net.Addr) {
	var errs []error
	for _, up := range f.upstreams {
		c, err := net.DialTimeout("udp", up.String(), 2*time.Second)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write(q); err != nil {
			c.Close()
			errs = append(errs, err)
			continue
		}
		resp := make([]byte, 65535)
		n, err := c.Read(resp)
		c.Close()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if _, err := f.udp.WriteTo(resp[:n], from); err != nil {
			f.log.Warn("dns: answer not sent back", "to", from, "err", err)
		}
		return
	}
	// A guest's lookup fails for it: worth a line beside the VM's other events.
	f.log.Warn("dns: no upstream answered", "from", from, "upstreams", f.upstreams, "err", errors.Join(errs...))
}

func (f *Forwarder) serveTCP() {
	for {
		c, err := f.tcp.Accept()
		if err != nil {
			return
		}
		select {
		case f.tcpSlots <- struct{}{}:
		default:
			c.Close()
			continue
		}
		go func() {
			defer func() { <-f.tcpSlots }()
			defer c.Close()
			for _, up := range f.upstreams {
				u, err := net.DialTimeout("tcp", up.String(), 2*time.Second)
				if err != nil {
					continue
				}
				defer u.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				_ = u.SetDeadline(time.Now().Add(30 * time.Second))
				go func() { _, _ = io.Copy(u, c) }()
				_, _ = io.Copy(c, u)
				return
			}
		}()
	}
}
