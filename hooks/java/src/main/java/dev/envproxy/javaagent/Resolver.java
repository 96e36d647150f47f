package dev.envproxy.javaagent;

import java.util.concurrent.ConcurrentHashMap;

/**
 * Resolves the references that System.getenv reads, with the library's rules: names starting
 * with ENVPROXY_ are never resolved, values are cached for ENVPROXY_CACHE_TTL, a value already
 * fetched is served while the agent is unreachable, and an unresolvable reference yields what
 * ENVPROXY_ON_ERROR says, with one stderr line per variable.
 *
 * <p>The JVM's copy of the environment never changes, so each name has one raw value for the
 * life of the process and the cache is keyed by name alone.
 */
final class Resolver {
    static final String VAULT_SCHEME = "vault:";
    static final String LOCAL_SCHEME = "envproxy:";
    static final String KUBE_SCHEME = "k8s:";
    static final String OWN_PREFIX = "ENVPROXY_";

    /** After a failure, the time before the agent is asked again for the same name. */
    private static final long RETRY_AFTER_NANOS = 1_000_000_000L;

    /** Set while this thread is inside {@link #slowPath}, so a read made there is not resolved. */
    private static final ThreadLocal<Boolean> BUSY = new ThreadLocal<>();

    /** The cached outcome for one name. Fields are written under the entry's lock. */
    private static final class Entry {
        /** The last value the agent returned, or null. */
        volatile String value;
        /** System.nanoTime until which value is fresh. */
        volatile long freshUntil;
        /** A lookup of an absent name found nothing, fresh until freshUntil. */
        boolean absent;
        /** System.nanoTime before which a failed name is not requested again. */
        long retryAfter;
        boolean failing;
        /** Whether this name's failure was reported on stderr already. */
        boolean reported;
    }

    private final Settings settings;
    private final AgentClient agent;
    private final ServedValues served;
    private final ConcurrentHashMap<String, Entry> entries = new ConcurrentHashMap<>();

    Resolver(Settings settings, AgentClient agent, ServedValues served) {
        this.settings = settings;
        this.agent = agent;
        this.served = served;
    }

    static boolean isReference(String value) {
        return value.startsWith(VAULT_SCHEME)
                || value.startsWith(LOCAL_SCHEME)
                || value.startsWith(KUBE_SCHEME);
    }

    /**
     * Returns what System.getenv(name) yields when the raw environment holds {@code raw} for
     * it (null when the name is absent): the resolved value, the raw value, or null.
     */
    String read(String name, String raw) {
        if (raw == null) {
            if (!settings.lookupUnset || name.isEmpty() || name.startsWith(OWN_PREFIX)) {
                return null;
            }
        } else if (!isReference(raw) || name.startsWith(OWN_PREFIX)) {
            return raw;
        }
        if (settings.ttlMillis > 0) {
            Entry entry = entries.get(name);
            if (entry != null) {
                long freshUntil = entry.freshUntil;
                String value = entry.value;
                if (value != null && System.nanoTime() - freshUntil < 0) {
                    return value;
                }
            }
        }
        if (BUSY.get() != null) {
            return raw;
        }
        BUSY.set(Boolean.TRUE);
        try {
            // No lambda (computeIfAbsent): bootstrapping one costs milliseconds at first use.
            Entry entry = entries.get(name);
            if (entry == null) {
                Entry created = new Entry();
                entry = entries.putIfAbsent(name, created);
                if (entry == null) {
                    entry = created;
                }
            }
            synchronized (entry) {
                return slowPath(name, raw, entry);
            }
        } finally {
            BUSY.remove();
        }
    }

    private String slowPath(String name, String raw, Entry entry) {
        long now = System.nanoTime();
        boolean fresh = settings.ttlMillis > 0 && now - entry.freshUntil < 0;
        if (fresh && entry.value != null) {
            debug(name, "resolved from the process cache");
            return entry.value;
        }
        if (fresh && entry.absent) {
            return null;
        }
        if (entry.failing && now - entry.retryAfter < 0) {
            if (entry.value != null) {
                debug(name, "agent unreachable, serving the last value (stale)");
                return entry.value;
            }
            return errorResult(name, raw);
        }

        byte[] nameBytes = name.getBytes(settings.charset);
        byte[] referenceBytes = raw == null ? null : raw.getBytes(settings.charset);
        AgentClient.Response response;
        try {
            response = agent.request(nameBytes, referenceBytes);
        } catch (AgentClient.AgentException unreachable) {
            return failure(name, raw, entry, unreachable.getMessage(), false);
        }
        long freshUntil = System.nanoTime() + settings.ttlMillis * 1_000_000L;
        switch (response.status()) {
            case AgentClient.STATUS_FOUND -> {
                String value = new String(response.payload(), settings.charset);
                entry.failing = false;
                entry.absent = false;
                entry.value = value;
                entry.freshUntil = freshUntil;
                served.record(name, raw, response.payload());
                debug(name, "resolved by the agent");
                return value;
            }
            case AgentClient.STATUS_NOT_FOUND -> {
                if (raw == null) {
                    entry.absent = true;
                    entry.value = null;
                    entry.freshUntil = freshUntil;
                    debug(name, "not set, and the agent does not have it");
                    return null;
                }
                return failure(name, raw, entry, "the agent's backend has no such key", true);
            }
            case AgentClient.STATUS_PASSTHROUGH -> {
                debug(name, "the agent says the value is not a reference");
                return raw;
            }
            default -> {
                String reason = new String(response.payload(), settings.charset);
                // The agent names the variable first; the failure line names it already.
                String prefix = name + ": ";
                if (reason.startsWith(prefix)) {
                    reason = reason.substring(prefix.length());
                }
                return failure(name, raw, entry, "the agent answered: " + reason, true);
            }
        }
    }

    /**
     * Records a failed request. An authoritative failure (the agent answered with an error)
     * drops the last value; an unreachable agent keeps it, so it is served stale.
     */
    private String failure(String name, String raw, Entry entry, String reason,
            boolean authoritative) {
        if (authoritative) {
            entry.value = null;
            entry.freshUntil = System.nanoTime();
        }
        entry.failing = true;
        entry.retryAfter = System.nanoTime() + RETRY_AFTER_NANOS;
        boolean report = !entry.reported;
        entry.reported = true;
        if (raw == null) {
            // An absent name that could not be looked up stays absent; the program did not set
            // it, so this is no error for the program.
            debug(name, "lookup of an unset name failed: " + reason);
            return null;
        }
        if (entry.value != null) {
            debug(name, "serving the last value (stale): " + reason);
            return entry.value;
        }
        if (report || settings.onError == Settings.OnError.EXIT) {
            String consequence = switch (settings.onError) {
                case REFERENCE -> "System.getenv returns the reference unchanged"
                        + " (ENVPROXY_ON_ERROR=reference)";
                case UNSET -> "System.getenv returns null (ENVPROXY_ON_ERROR=unset)";
                case EXIT -> "exiting with status " + Settings.EXIT_CONFIG
                        + " (ENVPROXY_ON_ERROR=exit)";
            };
            Diag.line(Diag.printable(name) + ": cannot resolve " + Diag.printable(raw) + ": "
                    + reason + "; " + consequence);
        }
        return errorResult(name, raw);
    }

    /** Applies ENVPROXY_ON_ERROR to a reference that cannot be resolved. */
    private String errorResult(String name, String raw) {
        if (raw == null) {
            return null;
        }
        switch (settings.onError) {
            case UNSET:
                return null;
            case EXIT:
                debug(name, "exiting because ENVPROXY_ON_ERROR=exit");
                // halt, as the library's _exit: shutdown hooks could read more variables.
                Runtime.getRuntime().halt(Settings.EXIT_CONFIG);
                return raw;
            default:
                return raw;
        }
    }

    private void debug(String name, String decision) {
        if (settings.debug) {
            Diag.line(Diag.printable(name) + ": " + decision);
        }
    }
}
