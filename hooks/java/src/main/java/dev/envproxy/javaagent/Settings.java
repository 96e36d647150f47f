package dev.envproxy.javaagent;

import java.nio.charset.Charset;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;

/** The hook's settings, read once at start from the same ENVPROXY_* variables as the library. */
final class Settings {
    /** Exit status for ENVPROXY_ON_ERROR=exit: EX_CONFIG from sysexits.h, as in the library. */
    static final int EXIT_CONFIG = 78;

    static final long DEFAULT_TTL_SECONDS = 30;
    static final long DEFAULT_TIMEOUT_MILLIS = 2000;

    /** What System.getenv returns for a reference that cannot be resolved. */
    enum OnError {
        /** The reference unchanged. */
        REFERENCE,
        /** null, as if the variable were not set. */
        UNSET,
        /** Nothing: the JVM halts with {@link #EXIT_CONFIG} after the stderr line. */
        EXIT
    }

    /**
     * ENVPROXY_ENABLED is not 0, false, no or off, and ENVPROXY_NO_JAVA is not 1, true or yes
     * (any case).
     */
    final boolean enabled;
    /** ENVPROXY_DEBUG=1: one stderr line per reference lookup and its outcome. */
    final boolean debug;
    /** ENVPROXY_CACHE_TTL in milliseconds; 0 sends a request for every read. */
    final long ttlMillis;
    /** ENVPROXY_TIMEOUT_MS: the longest one read waits for the agent. */
    final long timeoutMillis;
    final OnError onError;
    /** ENVPROXY_LOOKUP_UNSET=1: names absent from the environment are requested by name. */
    final boolean lookupUnset;
    /** ENVPROXY_SOCKET, or null for the per-user socket of the local agent. */
    private final String explicitSocket;
    private final String runtimeDir;
    /** The charset the JVM decodes environment bytes with, used for names and values. */
    final Charset charset;

    private Settings(Map<String, String> raw, boolean report) {
        enabled = !isDisabled(raw.get("ENVPROXY_ENABLED"))
                && !isSwitchOn(raw.get("ENVPROXY_NO_JAVA"));
        debug = "1".equals(raw.get("ENVPROXY_DEBUG"));
        long ttlSeconds = number(raw, "ENVPROXY_CACHE_TTL", DEFAULT_TTL_SECONDS, report);
        ttlMillis = ttlSeconds > Long.MAX_VALUE / 1000 ? Long.MAX_VALUE : ttlSeconds * 1000;
        timeoutMillis = timeout(raw, report);
        onError = onError(raw.get("ENVPROXY_ON_ERROR"), report);
        lookupUnset = "1".equals(raw.get("ENVPROXY_LOOKUP_UNSET"));
        explicitSocket = raw.get("ENVPROXY_SOCKET");
        runtimeDir = raw.get("XDG_RUNTIME_DIR");
        charset = environmentCharset();
    }

    /** Returns whether a hook switch is on: 1, true or yes in any case, as the library reads it. */
    static boolean isSwitchOn(String value) {
        return "1".equals(value) || "true".equalsIgnoreCase(value) || "yes".equalsIgnoreCase(value);
    }

    /** Returns whether an ENVPROXY_ENABLED value turns EnvProxy off, as the library reads it. */
    static boolean isDisabled(String value) {
        return value != null && (value.equals("0") || value.equalsIgnoreCase("false")
                || value.equalsIgnoreCase("no") || value.equalsIgnoreCase("off"));
    }

    /**
     * Reads the settings from the raw environment. Invalid values are reported on stderr only
     * when libenvproxy.so is not preloaded, because the library reports the same values itself.
     */
    static Settings read(Map<String, String> raw) {
        String preload = raw.getOrDefault("LD_PRELOAD", "");
        return new Settings(raw, !preload.contains("libenvproxy"));
    }

    private static long number(Map<String, String> raw, String name, long fallback,
            boolean report) {
        String text = raw.get(name);
        if (text == null) {
            return fallback;
        }
        try {
            long value = Long.parseLong(text.trim());
            if (value >= 0) {
                return value;
            }
        } catch (NumberFormatException invalid) {
            if (text.trim().matches("[0-9]+")) {
                if (report) {
                    Diag.line(name + "=\"" + Diag.printable(text) + "\" is too large (the maximum"
                            + " is " + Long.MAX_VALUE + "); using the default " + fallback);
                }
                return fallback;
            }
            // Reported below, as a negative number is.
        }
        if (report) {
            Diag.line(name + "=\"" + Diag.printable(text) + "\" is not a whole number; using the"
                    + " default " + fallback);
        }
        return fallback;
    }

    private static long timeout(Map<String, String> raw, boolean report) {
        long timeout = number(raw, "ENVPROXY_TIMEOUT_MS", DEFAULT_TIMEOUT_MILLIS, report);
        if (timeout == 0) {
            if (report) {
                Diag.line("ENVPROXY_TIMEOUT_MS=0 would fail every request; using the default "
                        + DEFAULT_TIMEOUT_MILLIS);
            }
            return DEFAULT_TIMEOUT_MILLIS;
        }
        return timeout;
    }

    private static OnError onError(String text, boolean report) {
        if (text == null || text.isEmpty() || text.equals("reference")) {
            return OnError.REFERENCE;
        }
        if (text.equals("unset")) {
            return OnError.UNSET;
        }
        if (text.equals("exit")) {
            return OnError.EXIT;
        }
        if (report) {
            Diag.line("ENVPROXY_ON_ERROR=\"" + Diag.printable(text) + "\" is not one of"
                    + " reference, unset, exit; using reference");
        }
        return OnError.REFERENCE;
    }

    /**
     * Returns the agent socket, with the same default as the library and the agent. The
     * default needs the uid from /proc, which costs a JVM start about 10 ms, so it is found at
     * the first request rather than at start.
     */
    Path socketPath() {
        if (explicitSocket != null && !explicitSocket.isEmpty()) {
            return Path.of(explicitSocket);
        }
        if (runtimeDir != null && !runtimeDir.isEmpty()) {
            return Path.of(runtimeDir, "envproxy", "agent.sock");
        }
        return Path.of("/tmp", "envproxy-" + ProcessIds.realUid(), "agent.sock");
    }

    private static Charset environmentCharset() {
        String name = System.getProperty("sun.jnu.encoding");
        if (name != null) {
            try {
                return Charset.forName(name);
            } catch (IllegalArgumentException unsupported) {
                // Falls through to the default, which the JVM then uses too.
            }
        }
        return Charset.defaultCharset();
    }

    /** User ids of this process, read from /proc/self/status. */
    static final class ProcessIds {
        private ProcessIds() {}

        /** Returns the real uid (field 1 of the Uid line), as getuid() does. */
        static long realUid() {
            return uidField(0);
        }

        /** Returns the effective uid (field 2 of the Uid line), as geteuid() does. */
        static long effectiveUid() {
            return uidField(1);
        }

        private static long uidField(int index) {
            try {
                for (String line : Files.readAllLines(Path.of("/proc/self/status"),
                        StandardCharsets.US_ASCII)) {
                    if (line.startsWith("Uid:")) {
                        // Four tab-separated numbers: real, effective, saved and file system uid.
                        String[] fields = line.substring(4).trim().split("\t");
                        return Long.parseLong(fields[index].trim());
                    }
                }
            } catch (java.io.IOException | RuntimeException unreadable) {
                // Falls through: without /proc the uid is unknown.
            }
            throw new IllegalStateException("cannot read the uid of this process from"
                    + " /proc/self/status; set ENVPROXY_SOCKET to the agent socket");
        }
    }
}
