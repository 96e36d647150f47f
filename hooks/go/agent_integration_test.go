//go:build envproxy_agent

package envproxy

// Tests against a real envproxy-agent. `cargo test -p envproxy-cli --test e2e_go` starts the
// agent and runs them with `go test -tags envproxy_agent`, setting:
//
//	ENVPROXY_SOCKET                the agent's socket
//	ENVPROXY_GO_TEST_SECRETS       the secrets file it serves (rewritten here to rotate values)
//	ENVPROXY_GO_TEST_SECRET_NAME   a key of that file, also set in the environment as
//	                               envproxy:<name>

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

type harness struct {
	secretsPath string
	name        string
}

func requireHarness(t *testing.T) harness {
	t.Helper()
	h := harness{
		secretsPath: os.Getenv("ENVPROXY_GO_TEST_SECRETS"),
		name:        os.Getenv("ENVPROXY_GO_TEST_SECRET_NAME"),
	}
	if h.secretsPath == "" || h.name == "" || os.Getenv("ENVPROXY_SOCKET") == "" {
		t.Fatal("these tests need a running agent; run them with " +
			"`cargo test -p envproxy-cli --test e2e_go`, which starts one and sets " +
			"ENVPROXY_SOCKET, ENVPROXY_GO_TEST_SECRETS and ENVPROXY_GO_TEST_SECRET_NAME")
	}
	return h
}

func (h harness) secrets(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile(h.secretsPath)
	if err != nil {
		t.Fatalf("read %s: %v", h.secretsPath, err)
	}
	secrets := map[string]string{}
	if err := json.Unmarshal(data, &secrets); err != nil {
		t.Fatalf("parse %s: %v", h.secretsPath, err)
	}
	return secrets
}

// writeSecrets replaces the file atomically, as an editor does; the agent polls it.
func (h harness) writeSecrets(t *testing.T, secrets map[string]string) {
	t.Helper()
	data, err := json.Marshal(secrets)
	if err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(filepath.Dir(h.secretsPath), "secrets.json.go-new")
	if err := os.WriteFile(staging, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(staging, h.secretsPath); err != nil {
		t.Fatal(err)
	}
}

func TestAgentResolvesThroughGetenvAndLookupEnv(t *testing.T) {
	h := requireHarness(t)
	want := h.secrets(t)[h.name]
	if raw := os.Getenv(h.name); raw != "envproxy:"+h.name {
		t.Fatalf("the environment holds %q for %s, want the reference", raw, h.name)
	}
	if got := Getenv(h.name); got != want {
		t.Fatal("Getenv did not return the agent's value")
	}
	if got, ok := LookupEnv(h.name); got != want || !ok {
		t.Fatal("LookupEnv did not return the agent's value")
	}
}

func TestAgentAnswersNotFoundWithReference(t *testing.T) {
	requireHarness(t)
	env := map[string]string{"ABSENT_KEY": "envproxy:ABSENT_KEY_NOT_IN_FILE"}
	r := testResolver(env, os.Getenv("ENVPROXY_SOCKET"), nil)
	if value, ok := r.lookup("ABSENT_KEY"); value != env["ABSENT_KEY"] || !ok {
		t.Fatalf("ABSENT_KEY = %q, %v, want the reference", value, ok)
	}
}

func TestRotatedValueSeenWithinTTL(t *testing.T) {
	h := requireHarness(t)
	env := map[string]string{"ROTATING": "envproxy:" + h.name}
	r := testResolver(env, os.Getenv("ENVPROXY_SOCKET"), func(s *settings) { s.ttl = time.Second })
	secrets := h.secrets(t)
	old := secrets[h.name]
	if value, _ := r.lookup("ROTATING"); value != old {
		t.Fatal("the first read did not return the file's value")
	}
	secrets[h.name] = old + "-rotated"
	h.writeSecrets(t, secrets)
	edited := time.Now()
	defer func() {
		secrets[h.name] = old
		h.writeSecrets(t, secrets)
	}()
	for {
		value, _ := r.lookup("ROTATING")
		if value == old+"-rotated" {
			break
		}
		if value != old {
			t.Fatal("a read returned neither the old nor the new value")
		}
		if time.Since(edited) > 3*time.Second {
			t.Fatal("the rotated value was not seen within 3 s (TTL 1 s, file poll 250 ms)")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if delay := time.Since(edited); delay > 2*time.Second {
		t.Fatalf("the rotated value was seen after %v", delay)
	}
}
