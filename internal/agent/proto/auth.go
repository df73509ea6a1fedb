package proto

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
)

// The handshake costs one round trip. The host sends Auth and its Request in one
// flight; Auth.MAC = HMAC(token, "mvm-host-v1" | nonce | time | sha256(request)).
// The agent accepts it when the MAC verifies, the host's time is within ClockWindow of
// the guest's, and the nonce was not seen within the window (so a recorded opening
// cannot be replayed); it answers AuthOK with HMAC(token, "mvm-agent-v1" | nonce |
// challenge), proving itself before the host trusts any answer. When the clocks
// disagree or the nonce repeats, the agent sends a Challenge and the host proves
// itself against the agent's nonce instead: one more round trip, no clock needed.

// NonceLen is the length of the random challenge each side contributes.
const NonceLen = 32

// MinTokenLen is the shortest per-VM token accepted.
const MinTokenLen = 16

// ClockWindow is how far apart host and guest clocks may be on the fast path.
const ClockWindow = 30 * time.Second

// ErrAuth is returned when a peer fails the token handshake.
var ErrAuth = errors.New("agent authentication failed")

// NewNonce returns fresh random bytes for a handshake.
func NewNonce() ([]byte, error) {
	b := make([]byte, NonceLen)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	return b, nil
}

// HostMAC is the host's proof. challenge is nil on the fast path.
func HostMAC(token, nonce []byte, timeNs int64, challenge, request []byte) []byte {
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], uint64(timeNs))
	req := sha256.Sum256(request)
	return mac(token, "mvm-host-v1", nonce, ts[:], challenge, req[:])
}

// AgentMAC is the agent's proof, bound to the host's nonce (and challenge, if any).
func AgentMAC(token, hostNonce, challenge []byte) []byte {
	return mac(token, "mvm-agent-v1", hostNonce, challenge)
}

// IdentifiedMAC proves that whoever answers an identify holds token, bound to the
// request's entropy (fresh and random for every identify).
func IdentifiedMAC(token, entropy []byte) []byte {
	return mac(token, "mvm-identified-v1", entropy)
}

func mac(token []byte, label string, parts ...[]byte) []byte {
	m := hmac.New(sha256.New, token)
	m.Write([]byte(label))
	for _, p := range parts {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(p)))
		m.Write(n[:]) // length-prefixed, so no two part lists hash alike
		m.Write(p)
	}
	return m.Sum(nil)
}

// VerifyMAC compares in constant time.
func VerifyMAC(got, want []byte) bool { return len(got) == len(want) && hmac.Equal(got, want) }

// CheckNonce checks a peer's nonce.
func CheckNonce(n []byte) error {
	if len(n) != NonceLen {
		return fmt.Errorf("%w: nonce of %d bytes", ErrAuth, len(n))
	}
	return nil
}

// ReplayGuard remembers the host nonces accepted on the fast path for twice the clock
// window, which is as long as a recorded opening could still pass the clock check.
type ReplayGuard struct {
	mu   sync.Mutex
	seen map[[NonceLen]byte]time.Time
	max  int
}

// NewReplayGuard remembers at most max nonces; beyond that the fast path is refused
// (the host falls back to a challenge) until old entries expire.
func NewReplayGuard(max int) *ReplayGuard {
	return &ReplayGuard{seen: map[[NonceLen]byte]time.Time{}, max: max}
}

// Fresh reports whether the host's time is within the window of now and its nonce
// is new, and records the nonce.
func (g *ReplayGuard) Fresh(nonce []byte, hostTimeNs int64, now time.Time) bool {
	skew := now.Sub(time.Unix(0, hostTimeNs))
	if skew > ClockWindow || skew < -ClockWindow || len(nonce) != NonceLen {
		return false
	}
	var k [NonceLen]byte
	copy(k[:], nonce)
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, dup := g.seen[k]; dup {
		return false
	}
	if len(g.seen) >= g.max {
		for n, exp := range g.seen {
			if now.After(exp) {
				delete(g.seen, n)
			}
		}
		if len(g.seen) >= g.max {
			return false
		}
	}
	g.seen[k] = now.Add(2 * ClockWindow)
	return true
}
