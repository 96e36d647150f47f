package dev.envproxy.javaagent;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * The values this JVM resolved, each with the name and the reference it came from, so the
 * environment of a child can carry the reference instead of the value. An entry is added only
 * when a value changes, so memory grows with rotations, not with reads.
 */
final class ServedValues {
    /** One resolved value. {@code reference} is null for a name that was absent and looked up. */
    record Served(String name, String reference, byte[] value) {}

    private final List<Served> served = new ArrayList<>();

    synchronized void record(String name, String reference, byte[] value) {
        for (Served entry : served) {
            if (entry.name.equals(name) && Arrays.equals(entry.value, value)) {
                return;
            }
        }
        served.add(new Served(name, reference, value.clone()));
    }

    /**
     * Returns how {@code value} was resolved for {@code name}, preferring an entry of the same
     * name, then one with a reference, or null when this JVM never resolved that value.
     */
    synchronized Served find(byte[] name, byte[] value, java.nio.charset.Charset charset) {
        String nameText = new String(name, charset);
        Served otherName = null;
        for (Served entry : served) {
            if (!Arrays.equals(entry.value, value)) {
                continue;
            }
            if (entry.name.equals(nameText)) {
                return entry;
            }
            if (otherName == null || (otherName.reference == null && entry.reference != null)) {
                otherName = entry;
            }
        }
        return otherName;
    }
}
