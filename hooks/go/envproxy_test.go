package envproxy

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAgent serves the agent protocol on a Unix socket with a handler chosen by the test, and
// records every request frame it receives.
type fakeAgent struct {
	t        *testing.T
	path     string
	listener net.Listener
	handler  func(request []byte) []byte

	mu       sync.Mutex
	requests [][]byte
}

func startFakeAgent(t *testing.T, handler func(request []byte) []byte) *fakeAgent {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	listener, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("listen on %s: %v", path, err)
	}
	agent := &fakeAgent{t: t, path: path, listener: listener, handler: handler}
	go agent.serve()
	t.Cleanup(func() { listener.Close() })
	return agent
}

func (a *fakeAgent) serve() {
	for {
		conn, err := a.listener.Accept()
		if err != nil {
			return
		}
		go a.serveConn(conn)
	}
}

func (a *fakeAgent) serveConn(conn net.Conn) {
	defer conn.Close()
	for {
		request, err := readRequest(conn)
		if err != nil {
			return
		}
		a.mu.Lock()
		a.requests = append(a.requests, request)
		a.mu.Unlock()
		reply := a.handler(request)
		if reply == nil {
			// No response: the client's timeout must end the wait.
			time.Sleep(5 * time.Second)
			return
		}
		if _, err := conn.Write(reply); err != nil {
			return
		}
	}
}

func (a *fakeAgent) requestCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.requests)
}

func (a *fakeAgent) lastRequest() []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.requests) == 0 {
		return nil
	}
	return a.requests[len(a.requests)-1]
}

// readRequest reads one v1 or v2 request frame.
func readRequest(r io.Reader) ([]byte, error) {
	var head [3]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, err
	}
	frame := append([]byte(nil), head[:]...)
	key := make([]byte, binary.BigEndian.Uint16(head[1:]))
	if _, err := io.ReadFull(r, key); err != nil {
		return nil, err
	}
	frame = append(frame, key...)
	if head[0] != versionV2 {
		return frame, nil
	}
	var valueLen [2]byte
	if _, err := io.ReadFull(r, valueLen[:]); err != nil {
		return nil, err
	}
	value := make([]byte, binary.BigEndian.Uint16(valueLen[:]))
	if _, err := io.ReadFull(r, value); err != nil {
		return nil, err
	}
	frame = append(frame, valueLen[:]...)
	return append(frame, value...), nil
}

func reply(status byte, payload string) []byte {
	frame := []byte{status}
	return appendField(frame, payload)
}

func found(value string) func([]byte) []byte {
	return func([]byte) []byte { return reply(statusFound, value) }
}

// testResolver returns a resolver for the environment env against the agent at socket.
func testResolver(env map[string]string, socket string, adjust func(*settings)) *resolver {
	lookup := func(name string) (string, bool) {
		value, ok := env[name]
		return value, ok
	}
	s := settings{
		enabled: true,
		ttl:     30 * time.Second,
		timeout: 500 * time.Millisecond,
		socket:  socket,
	}
	if adjust != nil {
		adjust(&s)
	}
	return newResolver(s, lookup)
}

func TestPlainValuesAreNeverSent(t *testing.T) {
	agent := startFakeAgent(t, found("unexpected"))
	r := testResolver(map[string]string{"HOME": "/home/app", "EMPTY": ""}, agent.path, nil)
	if value, ok := r.lookup("HOME"); value != "/home/app" || !ok {
		t.Fatalf("HOME = %q, %v", value, ok)
	}
	if value, ok := r.lookup("EMPTY"); value != "" || !ok {
		t.Fatalf("EMPTY = %q, %v", value, ok)
	}
	if value, ok := r.lookup("ABSENT"); value != "" || ok {
		t.Fatalf("ABSENT = %q, %v", value, ok)
	}
	if n := agent.requestCount(); n != 0 {
		t.Fatalf("the agent received %d requests for plain values", n)
	}
}

func TestReferenceIsResolvedWithV2Frame(t *testing.T) {
	agent := startFakeAgent(t, found("s3cr3t-value"))
	r := testResolver(map[string]string{"DB_URL": "envproxy:DB_URL"}, agent.path, nil)
	if value, ok := r.lookup("DB_URL"); value != "s3cr3t-value" || !ok {
		t.Fatalf("DB_URL = %q, %v", value, ok)
	}
	want := []byte{versionV2, 0, 6}
	want = append(want, "DB_URL"...)
	want = append(want, 0, 15)
	want = append(want, "envproxy:DB_URL"...)
	if got := agent.lastRequest(); !bytes.Equal(got, want) {
		t.Fatalf("request frame %v, want %v", got, want)
	}
}

func TestCachedForTTLAndAskedAgainWithTTLZero(t *testing.T) {
	agent := startFakeAgent(t, found("value-1"))
	env := map[string]string{"TOKEN": "vault:secret/data/app#token"}
	cached := testResolver(env, agent.path, nil)
	for i := 0; i < 3; i++ {
		cached.lookup("TOKEN")
	}
	if n := agent.requestCount(); n != 1 {
		t.Fatalf("%d requests with a 30 s TTL, want 1", n)
	}
	uncached := testResolver(env, agent.path, func(s *settings) { s.ttl = 0 })
	for i := 0; i < 3; i++ {
		uncached.lookup("TOKEN")
	}
	if n := agent.requestCount(); n != 4 {
		t.Fatalf("%d requests in all with TTL 0, want 4", n)
	}
}

func TestChangedReferenceIsResolvedAgain(t *testing.T) {
	agent := startFakeAgent(t, func(request []byte) []byte {
		if bytes.HasSuffix(request, []byte("envproxy:B")) {
			return reply(statusFound, "value-b")
		}
		return reply(statusFound, "value-a")
	})
	env := map[string]string{"KEY": "envproxy:A"}
	r := testResolver(env, agent.path, nil)
	if value, _ := r.lookup("KEY"); value != "value-a" {
		t.Fatalf("KEY = %q, want value-a", value)
	}
	env["KEY"] = "envproxy:B"
	if value, _ := r.lookup("KEY"); value != "value-b" {
		t.Fatalf("KEY = %q after the reference changed, want value-b", value)
	}
}

func TestOwnSettingsAreNeverResolved(t *testing.T) {
	agent := startFakeAgent(t, found("unexpected"))
	r := testResolver(map[string]string{"ENVPROXY_SOCKET": "envproxy:X"}, agent.path, nil)
	if value, _ := r.lookup("ENVPROXY_SOCKET"); value != "envproxy:X" {
		t.Fatalf("ENVPROXY_SOCKET = %q", value)
	}
	if n := agent.requestCount(); n != 0 {
		t.Fatalf("the agent received %d requests", n)
	}
}

func TestDisabledReturnsReference(t *testing.T) {
	agent := startFakeAgent(t, found("unexpected"))
	r := testResolver(map[string]string{"K": "envproxy:K"}, agent.path,
		func(s *settings) { s.enabled = false })
	if value, _ := r.lookup("K"); value != "envproxy:K" {
		t.Fatalf("K = %q", value)
	}
}

func TestErrorsFollowOnError(t *testing.T) {
	agent := startFakeAgent(t, func(request []byte) []byte {
		if bytes.HasSuffix(request, []byte("MISSING")) {
			return reply(statusNotFound, "")
		}
		return reply(statusError, "permission denied")
	})
	env := map[string]string{"A": "envproxy:MISSING", "B": "vault:secret/data/x#y"}
	keep := testResolver(env, agent.path, nil)
	for _, name := range []string{"A", "B"} {
		if value, ok := keep.lookup(name); value != env[name] || !ok {
			t.Fatalf("%s = %q, %v with ENVPROXY_ON_ERROR=reference", name, value, ok)
		}
	}
	unset := testResolver(env, agent.path, func(s *settings) { s.onError = onErrorUnset })
	for _, name := range []string{"A", "B"} {
		if value, ok := unset.lookup(name); value != "" || ok {
			t.Fatalf("%s = %q, %v with ENVPROXY_ON_ERROR=unset", name, value, ok)
		}
	}
}

func TestPassthroughKeepsValue(t *testing.T) {
	agent := startFakeAgent(t, func([]byte) []byte { return reply(statusPassthrough, "") })
	r := testResolver(map[string]string{"K": "envproxy:K"}, agent.path, nil)
	if value, ok := r.lookup("K"); value != "envproxy:K" || !ok {
		t.Fatalf("K = %q, %v", value, ok)
	}
}

func TestStaleValueServedWhenAgentIsGone(t *testing.T) {
	agent := startFakeAgent(t, found("last-good"))
	r := testResolver(map[string]string{"K": "envproxy:K"}, agent.path,
		func(s *settings) { s.ttl = 0 })
	if value, _ := r.lookup("K"); value != "last-good" {
		t.Fatalf("K = %q", value)
	}
	agent.listener.Close()
	r.agent.mu.Lock()
	for _, conn := range r.agent.idle {
		conn.Close()
	}
	r.agent.idle = nil
	r.agent.mu.Unlock()
	if value, ok := r.lookup("K"); value != "last-good" || !ok {
		t.Fatalf("K = %q, %v with the agent gone, want the stale value", value, ok)
	}
}

func TestSilentAgentCostsOneTimeout(t *testing.T) {
	agent := startFakeAgent(t, func([]byte) []byte { return nil })
	env := map[string]string{"A": "envproxy:A", "B": "envproxy:B"}
	r := testResolver(env, agent.path, func(s *settings) { s.timeout = 200 * time.Millisecond })
	started := time.Now()
	if value, _ := r.lookup("A"); value != "envproxy:A" {
		t.Fatalf("A = %q", value)
	}
	if value, _ := r.lookup("B"); value != "envproxy:B" {
		t.Fatalf("B = %q", value)
	}
	elapsed := time.Since(started)
	if elapsed < 200*time.Millisecond || elapsed > 2*time.Second {
		t.Fatalf("two reads took %v, want one 200 ms timeout", elapsed)
	}
}

func TestMissingSocketReturnsReference(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "absent.sock")
	r := testResolver(map[string]string{"K": "envproxy:K"}, socket, nil)
	if value, ok := r.lookup("K"); value != "envproxy:K" || !ok {
		t.Fatalf("K = %q, %v", value, ok)
	}
}

func TestLookupUnsetAsksByName(t *testing.T) {
	agent := startFakeAgent(t, func(request []byte) []byte {
		if bytes.Equal(request, append([]byte{versionV1, 0, 5}, "EXTRA"...)) {
			return reply(statusFound, "from-agent")
		}
		return reply(statusNotFound, "")
	})
	r := testResolver(map[string]string{}, agent.path, func(s *settings) { s.lookupUnset = true })
	if value, ok := r.lookup("EXTRA"); value != "from-agent" || !ok {
		t.Fatalf("EXTRA = %q, %v", value, ok)
	}
	if value, ok := r.lookup("OTHER"); value != "" || ok {
		t.Fatalf("OTHER = %q, %v", value, ok)
	}
}

func TestSettingsFromEnvironment(t *testing.T) {
	env := map[string]string{
		"ENVPROXY_CACHE_TTL":  "5",
		"ENVPROXY_TIMEOUT_MS": "0",
		"ENVPROXY_ON_ERROR":   "unset",
		"XDG_RUNTIME_DIR":     "/run/user/1000",
	}
	s := settingsFromEnvironment(func(name string) (string, bool) {
		value, ok := env[name]
		return value, ok
	})
	if s.ttl != 5*time.Second || s.timeout != defaultTimeout || s.onError != onErrorUnset {
		t.Fatalf("settings %+v", s)
	}
	if s.socket != "/run/user/1000/envproxy/agent.sock" {
		t.Fatalf("socket %q", s.socket)
	}
	env["ENVPROXY_SOCKET"] = "/tmp/custom.sock"
	if path := socketPath(func(name string) (string, bool) {
		value, ok := env[name]
		return value, ok
	}); path != "/tmp/custom.sock" {
		t.Fatalf("socket %q", path)
	}
}

func TestPrintableEscapesControlCharacters(t *testing.T) {
	if got := printable("A\nB\x1b\xff"); got != `A\x0aB\x1b\xff` {
		t.Fatalf("printable = %q", got)
	}
}

func TestTimeoutMessageGivesMilliseconds(t *testing.T) {
	agent := startFakeAgent(t, func([]byte) []byte { return nil })
	r := testResolver(nil, agent.path, func(s *settings) { s.timeout = 200 * time.Millisecond })
	request, _ := encodeV2("A", "envproxy:A")
	_, err := r.agent.call(request)
	if err == nil || !strings.Contains(err.Error(), "did not answer within 200 ms (ENVPROXY_TIMEOUT_MS)") {
		t.Fatalf("error = %v, want the timeout in ms", err)
	}
}

func TestTruncatedResponseIsIncomplete(t *testing.T) {
	// The header promises 65535 bytes, 10 arrive, and the agent waits for the next request.
	truncated := append([]byte{statusFound, 0xff, 0xff}, "0123456789"...)
	agent := startFakeAgent(t, func([]byte) []byte { return truncated })
	r := testResolver(nil, agent.path, nil)
	request, _ := encodeV2("A", "envproxy:A")
	_, err := r.agent.call(request)
	want := "sent an incomplete response: 10 of the 65535 bytes its header promised arrived " +
		"within 500 ms (ENVPROXY_TIMEOUT_MS)"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error = %v, want %q", err, want)
	}
}

// captureStderr returns what run writes to os.Stderr.
func captureStderr(t *testing.T, run func()) string {
	t.Helper()
	reader, writer, err := os.Pipe()
	if err != nil {
		t.Fatalf("create a pipe: %v", err)
	}
	saved := os.Stderr
	os.Stderr = writer
	run()
	os.Stderr = saved
	writer.Close()
	output, _ := io.ReadAll(reader)
	reader.Close()
	return string(output)
}

func TestFailureMessageNamesCalledFunction(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "absent.sock")
	for _, api := range []string{"Getenv", "LookupEnv"} {
		r := testResolver(map[string]string{"K": "envproxy:K"}, socket, nil)
		stderr := captureStderr(t, func() { r.lookupAs("K", api) })
		want := api + " returns the reference unchanged"
		if !strings.Contains(stderr, want) {
			t.Fatalf("stderr = %q, want %q", stderr, want)
		}
	}
}

func TestTooLargeNumberGivesMaximum(t *testing.T) {
	lookup := func(name string) (string, bool) {
		if name == "ENVPROXY_CACHE_TTL" {
			return "99999999999999999999", true
		}
		return "", false
	}
	var ttl uint64
	stderr := captureStderr(t, func() { ttl = number(lookup, "ENVPROXY_CACHE_TTL", 30) })
	if ttl != 30 {
		t.Fatalf("ttl = %d, want the default 30", ttl)
	}
	want := `ENVPROXY_CACHE_TTL="99999999999999999999" is too large (the maximum is ` +
		`18446744073709551615); using the default 30`
	if !strings.Contains(stderr, want) {
		t.Fatalf("stderr = %q, want %q", stderr, want)
	}
}

func TestEnabledOffValues(t *testing.T) {
	for value, off := range map[string]bool{
		"0": true, "false": true, "No": true, "OFF": true, "1": false, "": false, "true": false,
	} {
		s := settingsFromEnvironment(func(name string) (string, bool) {
			if name == "ENVPROXY_ENABLED" {
				return value, true
			}
			return "", false
		})
		if s.enabled == off {
			t.Errorf("ENVPROXY_ENABLED=%q: enabled = %v", value, s.enabled)
		}
	}
}
