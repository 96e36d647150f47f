package dev.envproxy.javaagent;

import java.util.AbstractMap;
import java.util.AbstractSet;
import java.util.Iterator;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.Set;

/**
 * The map behind System.getenv() once the hook is installed: the JVM's own environment map,
 * with each reference read through the {@link Resolver}.
 *
 * <ul>
 *   <li>{@code get}, {@code getOrDefault}, {@code entrySet}, {@code values}, {@code forEach},
 *       {@code equals} and {@code hashCode} use resolved values. Iterating requests every
 *       reference that is not cached yet.
 *   <li>{@code containsKey}, {@code keySet} and {@code size} use the raw environment and send no
 *       request, except with ENVPROXY_ON_ERROR=unset, where a name whose reference cannot be
 *       resolved reads as absent everywhere, so they resolve the references they meet.
 *   <li>{@code toString} shows references, never resolved values, so a map printed to a log
 *       holds no secret.
 * </ul>
 *
 * System.getenv() wraps this map in Collections.unmodifiableMap, so it is never written.
 */
final class ResolvingEnvironment extends AbstractMap<String, String> {
    private final Map<String, String> raw;
    private final Resolver resolver;
    private final boolean unsetOnError;

    ResolvingEnvironment(Map<String, String> raw, Resolver resolver, boolean unsetOnError) {
        this.raw = raw;
        this.resolver = resolver;
        this.unsetOnError = unsetOnError;
    }

    @Override
    public String get(Object key) {
        if (!(key instanceof String name)) {
            // The JVM's map throws for a non-String key, and so does this one.
            return raw.get(key);
        }
        return resolver.read(name, raw.get(name));
    }

    @Override
    public boolean containsKey(Object key) {
        if (!unsetOnError) {
            return raw.containsKey(key);
        }
        return get(key) != null;
    }

    @Override
    public int size() {
        if (!unsetOnError) {
            return raw.size();
        }
        int count = 0;
        for (Iterator<Entry<String, String>> it = entrySet().iterator(); it.hasNext(); it.next()) {
            count++;
        }
        return count;
    }

    @Override
    public Set<String> keySet() {
        if (!unsetOnError) {
            return raw.keySet();
        }
        return super.keySet();
    }

    @Override
    public Set<Entry<String, String>> entrySet() {
        return new AbstractSet<>() {
            @Override
            public Iterator<Entry<String, String>> iterator() {
                return new ResolvingIterator(raw.entrySet().iterator());
            }

            @Override
            public int size() {
                return ResolvingEnvironment.this.size();
            }
        };
    }

    @Override
    public String toString() {
        return raw.toString();
    }

    /** Entries with resolved values, skipping names that read as unset. */
    private final class ResolvingIterator implements Iterator<Entry<String, String>> {
        private final Iterator<Entry<String, String>> rawEntries;
        private Entry<String, String> next;

        ResolvingIterator(Iterator<Entry<String, String>> rawEntries) {
            this.rawEntries = rawEntries;
        }

        @Override
        public boolean hasNext() {
            while (next == null && rawEntries.hasNext()) {
                Entry<String, String> entry = rawEntries.next();
                String value = resolver.read(entry.getKey(), entry.getValue());
                if (value != null) {
                    next = new SimpleImmutableEntry<>(entry.getKey(), value);
                }
            }
            return next != null;
        }

        @Override
        public Entry<String, String> next() {
            if (!hasNext()) {
                throw new NoSuchElementException();
            }
            Entry<String, String> entry = next;
            next = null;
            return entry;
        }
    }
}
