package envproxy

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const (
	defaultTTL     = 30 * time.Second
	defaultTimeout = 2000 * time.Millisecond
)

type onErrorMode int

const (
	onErrorReference onErrorMode = iota
	onErrorUnset
	onErrorExit
)

// settings are the ENVPROXY_* variables, read once.
type settings struct {
	enabled     bool
	debug       bool
	ttl         time.Duration
	timeout     time.Duration
	onError     onErrorMode
	lookupUnset bool
	socket      string
}

func settingsFromEnvironment(lookupEnv func(string) (string, bool)) settings {
	get := func(name string) string {
		value, _ := lookupEnv(name)
		return value
	}
	ttl := number(lookupEnv, "ENVPROXY_CACHE_TTL", uint64(defaultTTL/time.Second))
	timeoutMS := number(lookupEnv, "ENVPROXY_TIMEOUT_MS", uint64(defaultTimeout/time.Millisecond))
	if timeoutMS == 0 {
		diag(fmt.Sprintf("ENVPROXY_TIMEOUT_MS=0 would fail every request; using the default %d",
			defaultTimeout/time.Millisecond))
		timeoutMS = uint64(defaultTimeout / time.Millisecond)
	}
	return settings{
		enabled:     !isDisabled(get("ENVPROXY_ENABLED")),
		debug:       get("ENVPROXY_DEBUG") == "1",
		ttl:         time.Duration(ttl) * time.Second,
		timeout:     time.Duration(timeoutMS) * time.Millisecond,
		onError:     onErrorFrom(get("ENVPROXY_ON_ERROR")),
		lookupUnset: get("ENVPROXY_LOOKUP_UNSET") == "1",
		socket:      socketPath(lookupEnv),
	}
}

func number(lookupEnv func(string) (string, bool), name string, fallback uint64) uint64 {
	text, ok := lookupEnv(name)
	if !ok {
		return fallback
	}
	n, err := strconv.ParseUint(strings.TrimSpace(text), 10, 64)
	if errors.Is(err, strconv.ErrRange) {
		diag(fmt.Sprintf("%s=%q is too large (the maximum is %d); using the default %d",
			name, text, uint64(math.MaxUint64), fallback))
		return fallback
	}
	if err != nil {
		diag(fmt.Sprintf("%s=%q is not a whole number; using the default %d", name, text, fallback))
		return fallback
	}
	return n
}

func onErrorFrom(text string) onErrorMode {
	switch text {
	case "", "reference":
		return onErrorReference
	case "unset":
		return onErrorUnset
	case "exit":
		return onErrorExit
	}
	diag(fmt.Sprintf("ENVPROXY_ON_ERROR=%q is not one of reference, unset, exit; using reference",
		text))
	return onErrorReference
}

// socketPath returns ENVPROXY_SOCKET, else the local agent's per-user socket:
// $XDG_RUNTIME_DIR/envproxy/agent.sock when that directory is absolute, else
// /tmp/envproxy-<uid>/agent.sock.
func socketPath(lookupEnv func(string) (string, bool)) string {
	if path, _ := lookupEnv("ENVPROXY_SOCKET"); path != "" {
		return path
	}
	if runtimeDir, _ := lookupEnv("XDG_RUNTIME_DIR"); filepath.IsAbs(runtimeDir) {
		return filepath.Join(runtimeDir, "envproxy", "agent.sock")
	}
	return fmt.Sprintf("/tmp/envproxy-%d/agent.sock", os.Getuid())
}

// isDisabled returns whether an ENVPROXY_ENABLED value turns EnvProxy off: 0, false, no or off
// in any case, as the library reads it.
func isDisabled(value string) bool {
	for _, off := range []string{"0", "false", "no", "off"} {
		if strings.EqualFold(value, off) {
			return true
		}
	}
	return false
}
