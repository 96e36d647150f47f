package dev.envproxy.javaagent;

import java.io.EOFException;
import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.UserPrincipal;
import java.util.ArrayDeque;

/**
 * Requests to the agent over its Unix socket, in the frames of README's "Wire protocol"
 * section, each bounded by ENVPROXY_TIMEOUT_MS.
 *
 * <p>Up to {@link #MAX_IDLE} connections are kept and reused; a connection is used by one
 * thread at a time. Channels are non-blocking and every wait is a select with the time left
 * before the deadline, so a hung agent costs a read at most the timeout.
 */
final class AgentClient {
    static final byte VERSION_V1 = 1;
    static final byte VERSION_V2 = 2;

    static final int STATUS_FOUND = 0;
    static final int STATUS_NOT_FOUND = 1;
    static final int STATUS_ERROR = 2;
    static final int STATUS_PASSTHROUGH = 3;

    static final int MAX_KEY_LEN = 4096;
    static final int MAX_VALUE_LEN = 16 * 1024;

    /** Maximum idle connections kept, as in the library. */
    private static final int MAX_IDLE = 4;
    /** After a failure to reach the agent, requests fail at once for this long. */
    static final long BACKOFF_NANOS = 1_000_000_000L;

    private static final String HINT = "start envproxy-agent, run the program under `envproxy"
            + " run`, or point ENVPROXY_SOCKET at a running agent";

    /** One answer of the agent: a status byte and its payload. */
    record Response(int status, byte[] payload) {}

    /** A failed request; the message never contains a value. */
    static final class AgentException extends Exception {
        private static final long serialVersionUID = 1L;

        /** Whether a fresh connection may succeed where a reused one failed. */
        final boolean staleConnection;

        AgentException(String message) {
            this(message, false);
        }

        AgentException(String message, boolean staleConnection) {
            super(message, null, false, false);
            this.staleConnection = staleConnection;
        }
    }

    private final Settings settings;
    /** The agent socket, found at the first request. */
    private volatile Path socket;
    private final long timeoutNanos;
    private final ArrayDeque<Connection> idle = new ArrayDeque<>();
    /** System.nanoTime until which requests fail at once, while {@link #backingOff} is set. */
    private long downUntil;
    private boolean backingOff;
    private String lastFailure = "";

    AgentClient(Settings settings) {
        this.settings = settings;
        this.timeoutNanos = settings.timeoutMillis * 1_000_000L;
    }

    /**
     * Sends one request and returns the agent's response. {@code value} is the reference for a
     * v2 request, or null for a v1 request that looks up a bare name.
     */
    Response request(byte[] name, byte[] value) throws AgentException {
        byte[] frame = encode(name, value);
        synchronized (this) {
            if (backingOff && System.nanoTime() - downUntil < 0) {
                throw new AgentException(lastFailure
                        + " (a recent request failed; retrying after a short pause)");
            }
        }
        // A thread's interrupt status would close the channel in the middle of a frame, so it
        // is cleared for the exchange and restored afterwards.
        boolean interrupted = Thread.interrupted();
        try {
            if (socket == null) {
                try {
                    socket = settings.socketPath();
                } catch (IllegalStateException noUid) {
                    throw new AgentException(noUid.getMessage());
                }
            }
            Response response = send(frame);
            synchronized (this) {
                backingOff = false;
            }
            return response;
        } catch (AgentException failure) {
            synchronized (this) {
                lastFailure = failure.getMessage();
                downUntil = System.nanoTime() + BACKOFF_NANOS;
                backingOff = true;
            }
            throw failure;
        } finally {
            if (interrupted) {
                Thread.currentThread().interrupt();
            }
        }
    }

    private static byte[] encode(byte[] name, byte[] value) throws AgentException {
        if (name.length == 0 || name.length > MAX_KEY_LEN) {
            throw new AgentException("the request cannot be sent: the name is empty or longer"
                    + " than " + MAX_KEY_LEN + " bytes");
        }
        if (value != null && value.length > MAX_VALUE_LEN) {
            throw new AgentException("the request cannot be sent: the reference is longer than "
                    + MAX_VALUE_LEN + " bytes");
        }
        int length = 3 + name.length + (value == null ? 0 : 2 + value.length);
        ByteBuffer frame = ByteBuffer.allocate(length);
        frame.put(value == null ? VERSION_V1 : VERSION_V2);
        frame.putShort((short) name.length).put(name);
        if (value != null) {
            frame.putShort((short) value.length).put(value);
        }
        return frame.array();
    }

    private Response send(byte[] frame) throws AgentException {
        long deadline = System.nanoTime() + timeoutNanos;
        Connection reused = takeIdle();
        if (reused != null) {
            try {
                Response response = reused.exchange(frame, deadline);
                putIdle(reused);
                return response;
            } catch (AgentException failure) {
                reused.close();
                if (!failure.staleConnection) {
                    throw failure;
                }
            }
        }
        Connection fresh = connect(deadline);
        try {
            Response response = fresh.exchange(frame, deadline);
            putIdle(fresh);
            return response;
        } catch (AgentException failure) {
            fresh.close();
            throw failure;
        }
    }

    private synchronized Connection takeIdle() {
        return idle.pollLast();
    }

    private void putIdle(Connection connection) {
        synchronized (this) {
            if (idle.size() < MAX_IDLE) {
                idle.addLast(connection);
                return;
            }
        }
        connection.close();
    }

    private Connection connect(long deadline) throws AgentException {
        if (!Files.exists(socket)) {
            throw new AgentException("no agent socket at " + socket + " (" + HINT + ")");
        }
        SocketChannel channel = null;
        Selector selector = null;
        try {
            channel = SocketChannel.open(StandardProtocolFamily.UNIX);
            channel.configureBlocking(false);
            selector = Selector.open();
            Connection connection = new Connection(channel, selector);
            if (!channel.connect(UnixDomainSocketAddress.of(socket))) {
                connection.await(SelectionKey.OP_CONNECT, deadline);
                channel.finishConnect();
            }
            PeerCheck.requireTrustedAgent(channel, socket);
            return connection;
        } catch (AgentException failure) {
            closeQuietly(channel, selector);
            throw failure;
        } catch (IOException | RuntimeException failure) {
            closeQuietly(channel, selector);
            throw new AgentException("cannot connect to the agent at " + socket + ": "
                    + failure.getMessage() + " (" + HINT + ")");
        }
    }

    private static void closeQuietly(SocketChannel channel, Selector selector) {
        try {
            if (selector != null) {
                selector.close();
            }
            if (channel != null) {
                channel.close();
            }
        } catch (IOException ignored) {
            // Closing a socket that failed to connect has nothing left to report.
        }
    }

    /** One connection to the agent, with the selector that waits on it. */
    private final class Connection {
        private final SocketChannel channel;
        private final Selector selector;
        private final SelectionKey key;
        private final ByteBuffer header = ByteBuffer.allocate(3);

        Connection(SocketChannel channel, Selector selector) throws IOException {
            this.channel = channel;
            this.selector = selector;
            this.key = channel.register(selector, 0);
        }

        Response exchange(byte[] frame, long deadline) throws AgentException {
            try {
                ByteBuffer out = ByteBuffer.wrap(frame);
                while (out.hasRemaining()) {
                    if (channel.write(out) == 0) {
                        await(SelectionKey.OP_WRITE, deadline);
                    }
                }
                header.clear();
                readFully(header, deadline);
                int status = header.get(0) & 0xff;
                int length = ((header.get(1) & 0xff) << 8) | (header.get(2) & 0xff);
                if (status > STATUS_PASSTHROUGH) {
                    throw new AgentException("the agent at " + socket + " sent a malformed"
                            + " response: unknown response status byte " + status);
                }
                ByteBuffer payload = ByteBuffer.allocate(length);
                readPayload(payload, deadline);
                checkNoTrailingBytes();
                return new Response(status, payload.array());
            } catch (EOFException closed) {
                throw new AgentException("the agent at " + socket + " closed the connection"
                        + " without answering", true);
            } catch (IOException failure) {
                throw new AgentException("I/O error talking to the agent at " + socket + ": "
                        + failure.getMessage(), true);
            }
        }

        /**
         * Reads the payload that a received header promised. A payload cut short by a closed
         * connection or by the deadline is reported as an incomplete response, with how many of
         * its bytes arrived.
         */
        private void readPayload(ByteBuffer payload, long deadline) throws AgentException {
            String incomplete = "the agent at " + socket + " sent an incomplete response: ";
            try {
                readFully(payload, deadline);
            } catch (EOFException closed) {
                throw new AgentException(incomplete + "the header promised " + payload.capacity()
                        + " bytes, and the connection closed after " + payload.position());
            } catch (IOException failure) {
                throw new AgentException(incomplete + "the header promised " + payload.capacity()
                        + " bytes, and the connection failed after " + payload.position() + ": "
                        + failure.getMessage());
            } catch (AgentException timedOut) {
                throw new AgentException(incomplete + payload.position() + " of the "
                        + payload.capacity() + " bytes its header promised arrived within "
                        + timeoutNanos / 1_000_000 + " ms (ENVPROXY_TIMEOUT_MS)");
            }
        }

        private void readFully(ByteBuffer buffer, long deadline)
                throws IOException, AgentException {
            while (buffer.hasRemaining()) {
                int read = channel.read(buffer);
                if (read < 0) {
                    throw new EOFException();
                }
                if (read == 0) {
                    await(SelectionKey.OP_READ, deadline);
                }
            }
        }

        /** Rejects bytes past one response, which would put later answers out of step. */
        private void checkNoTrailingBytes() throws IOException, AgentException {
            ByteBuffer probe = ByteBuffer.allocate(1);
            int read = channel.read(probe);
            if (read > 0) {
                throw new AgentException("the agent at " + socket + " sent more than one"
                        + " response to one request");
            }
            if (read < 0) {
                // The agent closed the connection after answering: the answer stands, but the
                // connection cannot be reused.
                throw new EOFException();
            }
        }

        void await(int operation, long deadline) throws IOException, AgentException {
            key.interestOps(operation);
            try {
                while (true) {
                    long left = deadline - System.nanoTime();
                    if (left <= 0) {
                        throw new AgentException("the agent at " + socket + " did not answer"
                                + " within " + timeoutNanos / 1_000_000 + " ms"
                                + " (ENVPROXY_TIMEOUT_MS)");
                    }
                    int ready = selector.select(Math.max(1, left / 1_000_000));
                    selector.selectedKeys().clear();
                    if (ready > 0) {
                        return;
                    }
                }
            } finally {
                if (key.isValid()) {
                    key.interestOps(0);
                }
            }
        }

        void close() {
            closeQuietly(channel, selector);
        }
    }

    /** The agent must run as this process's user or as root, as the library requires. */
    static final class PeerCheck {
        private PeerCheck() {}

        static void requireTrustedAgent(SocketChannel channel, Path socket)
                throws IOException, AgentException {
            long ownUid = Settings.ProcessIds.effectiveUid();
            var lookup = socket.getFileSystem().getUserPrincipalLookupService();
            UserPrincipal own = lookup.lookupPrincipalByName(Long.toString(ownUid));
            UserPrincipal root = lookup.lookupPrincipalByName("0");
            UserPrincipal agent = peerUser(channel, socket);
            if (!agent.equals(own) && !agent.equals(root)) {
                throw new AgentException("the agent socket " + socket + " is served by user "
                        + agent.getName() + ", not by this user (uid " + ownUid + ") or root;"
                        + " requests are not sent to it (check who created the socket, or"
                        + " point ENVPROXY_SOCKET at your own agent)");
            }
        }

        /**
         * Returns the user of the process at the other end, from SO_PEERCRED. A runtime
         * linked without the jdk.net module has no way to read it; the socket file's owner,
         * the user that bound it, stands in then.
         */
        private static UserPrincipal peerUser(SocketChannel channel, Path socket)
                throws IOException {
            try {
                return channel.getOption(jdk.net.ExtendedSocketOptions.SO_PEERCRED).user();
            } catch (NoClassDefFoundError withoutJdkNet) {
                return Files.getOwner(socket);
            }
        }
    }
}
