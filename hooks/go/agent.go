package envproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// Frames of the agent socket (README "Wire protocol"), big-endian:
//
//	request v1: [u8 1][u16 key_len][key]
//	request v2: [u8 2][u16 key_len][key][u16 value_len][value]
//	response:   [u8 status][u16 len][payload]
const (
	versionV1 = 1
	versionV2 = 2

	statusFound       = 0
	statusNotFound    = 1
	statusError       = 2
	statusPassthrough = 3

	maxKeyLen   = 4096
	maxValueLen = 16 * 1024

	// maxIdle is the most idle connections kept; more are opened only while several
	// goroutines wait for the agent at once.
	maxIdle = 4
	// backoff is how long calls fail at once after a failure to reach the agent, so a program
	// that reads many references pays the timeout once per pause, not once per variable.
	backoff = time.Second
)

type response struct {
	status  byte
	payload []byte
}

func encodeV1(name string) ([]byte, error) {
	if err := checkKey(name); err != nil {
		return nil, err
	}
	frame := []byte{versionV1}
	return appendField(frame, name), nil
}

func encodeV2(name, reference string) ([]byte, error) {
	if err := checkKey(name); err != nil {
		return nil, err
	}
	if len(reference) > maxValueLen {
		return nil, fmt.Errorf("the request cannot be sent: value length %d exceeds the "+
			"maximum of %d bytes", len(reference), maxValueLen)
	}
	frame := []byte{versionV2}
	frame = appendField(frame, name)
	return appendField(frame, reference), nil
}

func checkKey(name string) error {
	if name == "" {
		return errors.New("the request cannot be sent: the key is empty")
	}
	if len(name) > maxKeyLen {
		return fmt.Errorf("the request cannot be sent: key length %d exceeds the maximum of "+
			"%d bytes", len(name), maxKeyLen)
	}
	return nil
}

func appendField(frame []byte, field string) []byte {
	frame = binary.BigEndian.AppendUint16(frame, uint16(len(field)))
	return append(frame, field...)
}

// readResponse reads one response frame from conn. timeout is the request's timeout, for
// the messages.
func readResponse(conn net.Conn, path string, timeout time.Duration) (response, error) {
	var header [3]byte
	if _, err := io.ReadFull(conn, header[:]); err != nil {
		return response{}, ioError(path, err, timeout)
	}
	status := header[0]
	if status > statusPassthrough {
		return response{}, fmt.Errorf("the agent at %s sent a malformed response: unknown "+
			"response status byte %d (expected 0, 1, 2 or 3)", path, status)
	}
	payload := make([]byte, binary.BigEndian.Uint16(header[1:]))
	if read, err := io.ReadFull(conn, payload); err != nil {
		return response{}, incompleteError(path, err, timeout, read, len(payload))
	}
	if (status == statusNotFound || status == statusPassthrough) && len(payload) != 0 {
		return response{}, fmt.Errorf("the agent at %s sent a malformed response: a status %d "+
			"response must have an empty payload, found %d bytes", path, status, len(payload))
	}
	return response{status: status, payload: payload}, nil
}

// errClosed marks a connection the agent closed, which a fresh connection may replace.
var errClosed = errors.New("closed the connection without answering")

func ioError(path string, err error, timeout time.Duration) error {
	var netError net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("the agent at %s %w", path, errClosed)
	case errors.As(err, &netError) && netError.Timeout():
		return fmt.Errorf("the agent at %s did not answer within %d ms "+
			"(ENVPROXY_TIMEOUT_MS)", path, timeout.Milliseconds())
	case errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNRESET):
		return fmt.Errorf("the agent at %s %w (%v)", path, errClosed, err)
	}
	return fmt.Errorf("I/O error talking to the agent at %s: %v", path, err)
}

// incompleteError describes a response whose header arrived but whose payload of expected
// bytes stopped after read bytes, because the agent closed the connection or the timeout
// passed.
func incompleteError(path string, err error, timeout time.Duration, read, expected int) error {
	var netError net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET):
		return fmt.Errorf("the agent at %s sent an incomplete response: the header promised "+
			"%d bytes, and the connection closed after %d", path, expected, read)
	case errors.As(err, &netError) && netError.Timeout():
		return fmt.Errorf("the agent at %s sent an incomplete response: %d of the %d bytes "+
			"its header promised arrived within %d ms (ENVPROXY_TIMEOUT_MS)", path, read,
			expected, timeout.Milliseconds())
	}
	return ioError(path, err, timeout)
}

// agentClient sends requests over a small pool of connections. A connection is used by one
// goroutine at a time and returned to the pool after a complete response.
type agentClient struct {
	path    string
	timeout time.Duration

	mu          sync.Mutex
	idle        []net.Conn
	downUntil   time.Time
	lastFailure string
}

func newAgentClient(path string, timeout time.Duration) *agentClient {
	return &agentClient{path: path, timeout: timeout}
}

// call sends one request frame and returns the agent's response within the timeout.
func (a *agentClient) call(frame []byte) (response, error) {
	a.mu.Lock()
	if time.Now().Before(a.downUntil) {
		last := a.lastFailure
		a.mu.Unlock()
		return response{}, fmt.Errorf("%s (a recent request failed; retrying after a short "+
			"pause)", last)
	}
	a.mu.Unlock()

	resp, err := a.exchange(frame)
	a.mu.Lock()
	if err != nil {
		a.lastFailure = err.Error()
		a.downUntil = time.Now().Add(backoff)
	} else {
		a.downUntil = time.Time{}
	}
	a.mu.Unlock()
	return resp, err
}

func (a *agentClient) exchange(frame []byte) (response, error) {
	deadline := time.Now().Add(a.timeout)
	if conn := a.takeIdle(); conn != nil {
		resp, err := a.roundTrip(conn, frame, deadline)
		if err == nil {
			a.putIdle(conn)
			return resp, nil
		}
		conn.Close()
		// A reused connection that the agent closed (an agent restart) gets one fresh try.
		if !errors.Is(err, errClosed) {
			return response{}, err
		}
	}
	conn, err := a.connect(deadline)
	if err != nil {
		return response{}, err
	}
	resp, err := a.roundTrip(conn, frame, deadline)
	if err != nil {
		conn.Close()
		return response{}, err
	}
	a.putIdle(conn)
	return resp, nil
}

func (a *agentClient) roundTrip(conn net.Conn, frame []byte, deadline time.Time) (response,
	error) {
	if err := conn.SetDeadline(deadline); err != nil {
		return response{}, ioError(a.path, err, a.timeout)
	}
	if _, err := conn.Write(frame); err != nil {
		return response{}, ioError(a.path, err, a.timeout)
	}
	return readResponse(conn, a.path, a.timeout)
}

const hint = "start envproxy-agent, run the program under `envproxy run`, or point " +
	"ENVPROXY_SOCKET at a running agent"

func (a *agentClient) connect(deadline time.Time) (net.Conn, error) {
	if len(a.path) > 107 {
		return nil, fmt.Errorf("the socket path %s is longer than a Unix socket address "+
			"allows (107 bytes); set ENVPROXY_SOCKET to a shorter path", a.path)
	}
	if _, err := os.Stat(a.path); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no agent socket at %s (%s)", a.path, hint)
	}
	dialer := net.Dialer{Deadline: deadline}
	conn, err := dialer.Dial("unix", a.path)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to the agent at %s: %v (%s)", a.path, err, hint)
	}
	if err := checkPeer(conn.(*net.UnixConn), a.path); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// checkPeer refuses an agent that runs as another user than this process or root, which must
// not learn which references this program reads.
func checkPeer(conn *net.UnixConn, path string) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("cannot read the agent's credentials on %s: %v", path, err)
	}
	var credentials *syscall.Ucred
	var credentialsErr error
	err = raw.Control(func(fd uintptr) {
		credentials, credentialsErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET,
			syscall.SO_PEERCRED)
	})
	if err == nil {
		err = credentialsErr
	}
	if err != nil {
		return fmt.Errorf("cannot read the agent's credentials on %s: %v", path, err)
	}
	own := uint32(os.Getuid())
	if credentials.Uid != own && credentials.Uid != 0 {
		return fmt.Errorf("the agent socket %s is served by uid %d, not by this user (uid %d) "+
			"or root; requests are not sent to it (check who created the socket, or point "+
			"ENVPROXY_SOCKET at your own agent)", path, credentials.Uid, own)
	}
	return nil
}

func (a *agentClient) takeIdle() net.Conn {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.idle) == 0 {
		return nil
	}
	conn := a.idle[len(a.idle)-1]
	a.idle = a.idle[:len(a.idle)-1]
	return conn
}

func (a *agentClient) putIdle(conn net.Conn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.idle) >= maxIdle {
		conn.Close()
		return
	}
	a.idle = append(a.idle, conn)
}
