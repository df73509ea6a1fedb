package proto

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
)

// NonceLen is the length of the random challenge each side contributes.
const NonceLen = 32

// MinTokenLen is the shortest per-VM token accepted.
const MinTokenLen = 16

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

// HostMAC is what the host sends: it binds both nonces in host order, so a recorded
// agent proof cannot be replayed as a host proof or vice versa.
func HostMAC(token, agentNonce, hostNonce []byte) []byte {
	return mac(token, "mvm-host-v1", agentNonce, hostNonce)
}

// AgentMAC is what the agent sends back.
func AgentMAC(token, agentNonce, hostNonce []byte) []byte {
	return mac(token, "mvm-agent-v1", hostNonce, agentNonce)
}

func mac(token []byte, label string, a, b []byte) []byte {
	m := hmac.New(sha256.New, token)
	m.Write([]byte(label))
	m.Write([]byte{0})
	m.Write(a)
	m.Write(b)
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
