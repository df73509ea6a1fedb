// Package fcapi is a typed client for the Firecracker REST API, spoken over
// the Unix socket a firecracker process opens with --api-sock.
//
// It is written by hand against Firecracker's API description for the
// release in APIVersion (see its comment for which description). Requests
// are checked before they are sent, so a mistake surfaces as a
// *ValidationError naming the field rather than as a Firecracker 400; a
// non-2xx answer becomes an *APIError carrying Firecracker's fault_message.
package fcapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"
)

// maxResponse bounds what is read from an answer; Firecracker's are small.
const maxResponse = 1 << 20

// maxRawFault bounds a fault taken from a body that is not Firecracker's
// JSON, so a misbehaving peer cannot flood error messages.
const maxRawFault = 512

// Client talks to one Firecracker process. It is safe for concurrent use.
type Client struct {
	socket string
	hc     *http.Client
	poll   time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithTimeout bounds each request, on top of its context. Zero (the
// default) leaves only the context.
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.hc.Timeout = d } }

// WithPollInterval sets how often WaitReady retries (default 5ms: the API is
// usually up about 12ms after the process starts).
func WithPollInterval(d time.Duration) Option {
	return func(c *Client) {
		if d > 0 {
			c.poll = d
		}
	}
}

// New returns a client for the API socket at socketPath. Nothing is dialled
// until the first request.
func New(socketPath string, opts ...Option) *Client {
	c := &Client{socket: socketPath, poll: 5 * time.Millisecond}
	var d net.Dialer
	c.hc = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socketPath)
		},
		DisableCompression:  true,
		MaxIdleConnsPerHost: 1,
	}}
	for _, opt := range opts {
		opt(c)
	}
	return c
}

// SocketPath is the socket the client talks to.
func (c *Client) SocketPath() string { return c.socket }

// Close drops idle connections; the client stays usable.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// APIError is a non-2xx answer from Firecracker.
type APIError struct {
	Method, Path string
	Status       int
	FaultMessage string
}

func (e *APIError) Error() string {
	msg := e.FaultMessage
	if msg == "" {
		msg = "(no fault_message)"
	}
	return fmt.Sprintf("firecracker %s %s: %d %s: %s", e.Method, e.Path, e.Status, http.StatusText(e.Status), msg)
}

// WaitReady polls GET / until the socket answers, and returns what it says.
// Dial failures (socket not there yet, nobody listening) are retried until
// ctx ends; any answer, including an error status, ends the wait.
func (c *Client) WaitReady(ctx context.Context) (InstanceInfo, error) {
	for {
		info, err := c.DescribeInstance(ctx)
		var apiErr *APIError
		if err == nil || errors.As(err, &apiErr) {
			return info, err
		}
		if ctx.Err() == nil && !isDialError(err) {
			return info, err
		}
		t := time.NewTimer(c.poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return InstanceInfo{}, fmt.Errorf("fcapi: waiting for %s: %w (last attempt: %w)", c.socket, ctx.Err(), err)
		case <-t.C:
		}
	}
}

// isDialError tells a socket that is not answering yet from a real failure.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// do sends one request. in, when not nil, is sent as JSON; decode, when not
// nil, is given the body of a 2xx answer.
func (c *Client) do(ctx context.Context, method, path string, in any, decode func([]byte) error) error {
	if c.socket == "" {
		return fmt.Errorf("fcapi: %s %s: no API socket path", method, path)
	}
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("fcapi: %s %s: encode body: %w", method, path, err)
		}
		body = bytes.NewReader(raw)
	}
	// The host part is ignored: the transport always dials the socket.
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, body)
	if err != nil {
		return fmt.Errorf("fcapi: %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("fcapi: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("fcapi: %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &APIError{Method: method, Path: path, Status: resp.StatusCode, FaultMessage: faultMessage(raw)}
	}
	if decode != nil {
		if err := decode(raw); err != nil {
			return fmt.Errorf("fcapi: %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// faultMessage takes the fault_message out of an error body. A body that is
// not Firecracker's JSON is kept, trimmed and bounded, so the error still
// says something.
func faultMessage(body []byte) string {
	var e struct {
		FaultMessage *string `json:"fault_message"`
	}
	if json.Unmarshal(body, &e) == nil && e.FaultMessage != nil {
		return *e.FaultMessage
	}
	s := strings.ToValidUTF8(strings.TrimSpace(string(body)), "\uFFFD")
	if len(s) <= maxRawFault {
		return s
	}
	cut := maxRawFault
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// decodeInstanceInfo reads the answer to GET /, which must carry every
// field the description marks required.
func decodeInstanceInfo(body []byte) (InstanceInfo, error) {
	var w struct {
		ID         *string        `json:"id"`
		State      *InstanceState `json:"state"`
		VMMVersion *string        `json:"vmm_version"`
		AppName    *string        `json:"app_name"`
	}
	if err := json.Unmarshal(body, &w); err != nil {
		return InstanceInfo{}, err
	}
	if w.ID == nil || w.State == nil || w.VMMVersion == nil || w.AppName == nil {
		return InstanceInfo{}, errors.New("instance info lacks one of id, state, vmm_version, app_name")
	}
	return InstanceInfo{ID: *w.ID, State: *w.State, VMMVersion: *w.VMMVersion, AppName: *w.AppName}, nil
}
