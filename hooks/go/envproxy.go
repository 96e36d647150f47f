// Package envproxy resolves EnvProxy secret references for Go programs.
//
// Go reads its environment from a copy taken at start and never calls libc getenv, so
// libenvproxy.so cannot reach a Go program. A Go program replaces os.Getenv and os.LookupEnv
// with Getenv and LookupEnv from this package for the variables that may hold references
// (`vault:...`, `envproxy:...`, `k8s:...`). They ask the EnvProxy agent for the value over its Unix
// socket, with the same rules as the library:
//
//   - values that start with neither scheme are returned as they are and never sent anywhere;
//   - names starting with ENVPROXY_ are never resolved;
//   - values are cached in the process for ENVPROXY_CACHE_TTL seconds (default 30; with 0 every
//     call sends a request), so a rotated secret is seen within the TTL;
//   - one call waits at most ENVPROXY_TIMEOUT_MS (default 2000) for the agent; after a failure
//     to reach it, calls fail at once for one second and the last value is served;
//   - ENVPROXY_ON_ERROR (reference, unset, exit) decides what an unresolvable reference yields,
//     with one line on stderr per variable;
//   - ENVPROXY_LOOKUP_UNSET=1 also asks the agent for names absent from the environment;
//   - ENVPROXY_ENABLED=0 (or false, no, off in any case) makes both functions plain os.LookupEnv;
//   - only an agent that runs as the same user or as root is asked (SO_PEERCRED).
//
// The agent socket is ENVPROXY_SOCKET, else the local agent's per-user socket. Settings are
// read at the first call. Resolved values stay in this process's memory: the environment, and
// so /proc/PID/environ and the environment os/exec gives children, keeps the references.
// Values are never logged.
package envproxy

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

const (
	vaultScheme = "vault:"
	localScheme = "envproxy:"
	kubeScheme  = "k8s:"
	ownPrefix   = "ENVPROXY_"

	// exitConfig is the status for ENVPROXY_ON_ERROR=exit: EX_CONFIG from sysexits.h.
	exitConfig = 78
	// retryAfter is the pause after a failed request before the next request for the same
	// variable. Calls in between get the stale value or the error result at once.
	retryAfter = time.Second
)

// Getenv returns the value of the environment variable name, with a reference resolved by
// the EnvProxy agent. It returns "" when the variable is unset, as os.Getenv does.
func Getenv(name string) string {
	value, _ := defaultResolver().lookupAs(name, "Getenv")
	return value
}

// LookupEnv returns the value of the environment variable name, with a reference resolved by
// the EnvProxy agent, and whether the variable is set. ENVPROXY_ON_ERROR selects the result for
// a reference that cannot be resolved: the reference itself (the default), unset, or exit.
func LookupEnv(name string) (string, bool) {
	return defaultResolver().lookup(name)
}

// IsReference reports whether value starts with a scheme that EnvProxy resolves.
func IsReference(value string) bool {
	return strings.HasPrefix(value, vaultScheme) ||
		strings.HasPrefix(value, localScheme) ||
		strings.HasPrefix(value, kubeScheme)
}

var (
	processResolverOnce sync.Once
	processResolver     *resolver
)

func defaultResolver() *resolver {
	processResolverOnce.Do(func() {
		processResolver = newResolver(settingsFromEnvironment(os.LookupEnv), os.LookupEnv)
	})
	return processResolver
}

// resolver holds the settings, the cache and the connections of one process.
type resolver struct {
	settings  settings
	lookupEnv func(string) (string, bool)
	agent     *agentClient

	mu    sync.Mutex
	cache map[string]*entry
}

// entry is the cached state of one variable name for one reference.
type entry struct {
	reference  string
	value      string
	hasValue   bool
	answered   bool
	freshUntil time.Time
	retryAfter time.Time
	reported   bool
}

func newResolver(s settings, lookupEnv func(string) (string, bool)) *resolver {
	return &resolver{
		settings:  s,
		lookupEnv: lookupEnv,
		agent:     newAgentClient(s.socket, s.timeout),
		cache:     make(map[string]*entry),
	}
}

func (r *resolver) lookup(name string) (string, bool) {
	return r.lookupAs(name, "LookupEnv")
}

// lookupAs is lookup for the exported function api, which the error message names.
func (r *resolver) lookupAs(name, api string) (string, bool) {
	raw, present := r.lookupEnv(name)
	if !r.settings.enabled || strings.HasPrefix(name, ownPrefix) {
		return raw, present
	}
	if !present {
		if !r.settings.lookupUnset || name == "" || strings.ContainsAny(name, "=\x00") {
			return "", false
		}
		return r.resolve(name, raw, false, api)
	}
	if !IsReference(raw) {
		return raw, true
	}
	return r.resolve(name, raw, true, api)
}

// resolve returns what a read of name yields. reference is its value in the environment, and
// isReference is false for a name absent from the environment. api is the exported function
// called, for the error message.
func (r *resolver) resolve(name, reference string, isReference bool, api string) (string,
	bool) {
	r.mu.Lock()
	e := r.cache[name]
	if e == nil || e.reference != reference {
		e = &entry{reference: reference}
		r.cache[name] = e
	}
	now := time.Now()
	if r.settings.ttl > 0 && e.answered && now.Before(e.freshUntil) {
		value, ok := e.value, e.hasValue
		r.mu.Unlock()
		return value, ok
	}
	if now.Before(e.retryAfter) {
		value, stale := e.value, e.hasValue
		r.mu.Unlock()
		if stale {
			r.debug(name, "agent unreachable, serving the last value (stale)")
			return value, true
		}
		return r.errorResult(reference, isReference)
	}
	r.mu.Unlock()

	// The lock is released while waiting for the agent, so reads of other variables go on.
	// Two goroutines that miss together both send a request, and the later response wins.
	var request []byte
	var err error
	if isReference {
		request, err = encodeV2(name, reference)
	} else {
		request, err = encodeV1(name)
	}
	var resp response
	if err == nil {
		started := time.Now()
		resp, err = r.agent.call(request)
		if err == nil && r.settings.debug && resp.status == statusFound {
			r.debug(name, fmt.Sprintf("resolved by the agent in %d ms",
				time.Since(started).Milliseconds()))
		}
	}
	freshUntil := time.Now().Add(r.settings.ttl)

	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err != nil:
		return r.failure(name, e, api, isReference, err.Error(), false)
	case resp.status == statusFound:
		e.value, e.hasValue, e.answered = string(resp.payload), true, true
		e.freshUntil, e.retryAfter, e.reported = freshUntil, time.Time{}, false
		return e.value, true
	case resp.status == statusNotFound && !isReference:
		e.value, e.hasValue, e.answered = "", false, true
		e.freshUntil = freshUntil
		r.debug(name, "not set, and the agent does not have it")
		return "", false
	case resp.status == statusNotFound:
		return r.failure(name, e, api, isReference, "the agent's backend has no such key", true)
	case resp.status == statusError:
		reason := "the agent answered: " + string(resp.payload)
		return r.failure(name, e, api, isReference, reason, true)
	default:
		r.debug(name, "the agent says the value is not a reference")
		return reference, true
	}
}

// failure records a failed request for e and returns what the read yields. Called with r.mu
// held. An authoritative failure (a response from the agent) drops the stale value, so an
// older value never masks the agent's own response.
func (r *resolver) failure(name string, e *entry, api string, isReference bool,
	reason string, authoritative bool) (string, bool) {
	if authoritative {
		e.value, e.hasValue, e.answered = "", false, false
	}
	e.retryAfter = time.Now().Add(retryAfter)
	if !isReference {
		r.debug(name, "lookup of an unset name failed: "+reason)
		return "", false
	}
	if e.hasValue {
		r.debug(name, "serving the last value (stale): "+reason)
		return e.value, true
	}
	onError := r.settings.onError
	if !e.reported || onError == onErrorExit {
		e.reported = true
		var consequence string
		switch onError {
		case onErrorUnset:
			consequence = api + " reports the variable unset (ENVPROXY_ON_ERROR=unset)"
			if api == "Getenv" {
				consequence = `Getenv returns "" (ENVPROXY_ON_ERROR=unset)`
			}
		case onErrorExit:
			consequence = fmt.Sprintf("exiting with status %d (ENVPROXY_ON_ERROR=exit)",
				exitConfig)
		default:
			consequence = api + " returns the reference unchanged (ENVPROXY_ON_ERROR=reference)"
		}
		diag(fmt.Sprintf("%s: cannot resolve %s: %s; %s",
			printable(name), printable(e.reference), reason, consequence))
	}
	return r.errorResult(e.reference, isReference)
}

// errorResult applies ENVPROXY_ON_ERROR to a reference that cannot be resolved.
func (r *resolver) errorResult(reference string, isReference bool) (string, bool) {
	if !isReference {
		return "", false
	}
	switch r.settings.onError {
	case onErrorUnset:
		return "", false
	case onErrorExit:
		os.Exit(exitConfig)
	}
	return reference, true
}

func (r *resolver) debug(name, decision string) {
	if r.settings.debug {
		diag(printable(name) + ": " + decision)
	}
}

// diag writes `envproxy[PID]: MESSAGE` to stderr in one write. It never receives a value.
func diag(message string) {
	line := fmt.Sprintf("envproxy[%d]: %s\n", os.Getpid(), message)
	_, _ = os.Stderr.WriteString(line)
}

// maxQuotedChars is the most characters of a name or reference quoted in a stderr line.
const maxQuotedChars = 200

// printable returns text for a stderr line: control characters and invalid UTF-8 escaped as
// \xNN, cut after maxQuotedChars characters with "...".
func printable(text string) string {
	var out bytes.Buffer
	count := 0
	for i, c := range text {
		if count == maxQuotedChars {
			out.WriteString("...")
			break
		}
		count++
		switch {
		case c == utf8.RuneError && !strings.HasPrefix(text[i:], "\uFFFD"):
			fmt.Fprintf(&out, "\\x%02x", text[i])
		case c < 0x20 || c == 0x7f || (c >= 0x80 && c < 0xa0):
			for _, b := range []byte(string(c)) {
				fmt.Fprintf(&out, "\\x%02x", b)
			}
		default:
			out.WriteRune(c)
		}
	}
	return out.String()
}
