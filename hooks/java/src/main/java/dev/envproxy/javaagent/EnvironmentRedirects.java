package dev.envproxy.javaagent;

import java.io.ByteArrayOutputStream;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.MethodType;
import java.nio.charset.Charset;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * The method that java.lang.ProcessImpl calls in place of ProcessEnvironment's own once the
 * hook has patched it: {@link ClassPatch} points ProcessImpl's call of
 * {@code ProcessEnvironment.toEnvironmentBlock} at the method here.
 *
 * <p>The class is public, and the jar is on the boot class path, because java.base links to it.
 */
public final class EnvironmentRedirects {
    /** ProcessEnvironment's own toEnvironmentBlock, looked up at the first child start. */
    private static volatile MethodHandle originalToEnvironmentBlock;
    private static ServedValues served;
    private static Charset charset;
    /** NAME=VALUE of LD_PRELOAD and ENVPROXY_* from the JVM's environment, as bytes. */
    private static List<byte[]> settingsEntries;
    /** Values of plain (not reference) variables of the JVM's environment, as bytes. */
    private static List<byte[]> plainValues;

    /**
     * Shortest value replaced when it was resolved under another variable name. Shorter values
     * ("1", "root", "5432") are as likely to be an ordinary setting as a renamed secret, as in
     * the library.
     */
    private static final int MIN_RENAMED_VALUE_LEN = 8;

    private EnvironmentRedirects() {}

    static void configure(Map<String, String> environment, ServedValues servedValues,
            Charset environmentCharset) {
        served = servedValues;
        charset = environmentCharset;
        settingsEntries = new ArrayList<>();
        plainValues = new ArrayList<>();
        for (Map.Entry<String, String> entry : environment.entrySet()) {
            String name = entry.getKey();
            String value = entry.getValue();
            if (name.equals("LD_PRELOAD") || name.startsWith(Resolver.OWN_PREFIX)) {
                settingsEntries.add((name + "=" + value).getBytes(charset));
            }
            if (!Resolver.isReference(value)) {
                plainValues.add(value.getBytes(charset));
            }
        }
    }

    /**
     * Builds a child's environment block as ProcessEnvironment does, then puts back the
     * reference of every value this JVM resolved, so a program that copied a value from
     * System.getenv into ProcessBuilder.environment() still passes the child a reference.
     * A child that gets references also gets LD_PRELOAD and the ENVPROXY_* settings of this
     * JVM when its environment lacks them. A value resolved for a name absent from the environment (ENVPROXY_LOOKUP_UNSET=1) has
     * no reference, so its entry is left out and the child requests the name again.
     *
     * <p>The block is {@code NAME=VALUE} entries, each followed by a NUL byte, and
     * {@code count[0]} is set to the number of entries. A null map means the child inherits
     * the JVM's environment, which holds references only.
     */
    public static byte[] toEnvironmentBlock(Map<String, String> environment, int[] count)
            throws Throwable {
        byte[] block = (byte[]) originalToEnvironmentBlock().invoke(environment, count);
        if (block == null) {
            return block;
        }
        List<byte[]> entries = new ArrayList<>();
        int start = 0;
        for (int i = 0; i < block.length; i++) {
            if (block[i] == 0) {
                entries.add(java.util.Arrays.copyOfRange(block, start, i));
                start = i + 1;
            }
        }
        boolean changed = false;
        boolean hasReference = false;
        List<byte[]> rewritten = new ArrayList<>(entries.size());
        for (byte[] entry : entries) {
            byte[] replacement = rewrite(entry);
            if (replacement != entry) {
                changed = true;
            }
            if (replacement != null) {
                rewritten.add(replacement);
                hasReference |= holdsReference(replacement);
            }
        }
        if (hasReference) {
            changed |= addMissingSettings(rewritten);
        }
        if (!changed) {
            return block;
        }
        ByteArrayOutputStream out = new ByteArrayOutputStream(block.length);
        for (byte[] entry : rewritten) {
            out.write(entry, 0, entry.length);
            out.write(0);
        }
        count[0] = rewritten.size();
        return out.toByteArray();
    }

    /**
     * Returns ProcessEnvironment.toEnvironmentBlock. It is looked up on first use, not at
     * start, because creating a method handle costs a JVM start several milliseconds.
     */
    private static MethodHandle originalToEnvironmentBlock() throws ReflectiveOperationException {
        MethodHandle handle = originalToEnvironmentBlock;
        if (handle == null) {
            Class<?> processEnvironment = Class.forName("java.lang.ProcessEnvironment");
            MethodHandles.Lookup lookup =
                    MethodHandles.privateLookupIn(processEnvironment, MethodHandles.lookup());
            handle = lookup.findStatic(processEnvironment, "toEnvironmentBlock",
                    MethodType.methodType(byte[].class, Map.class, int[].class));
            originalToEnvironmentBlock = handle;
        }
        return handle;
    }

    /** Returns the entry to pass to the child: {@code entry} itself, a new one, or null. */
    private static byte[] rewrite(byte[] entry) {
        int equals = indexOf(entry, (byte) '=');
        if (equals <= 0) {
            return entry;
        }
        byte[] name = java.util.Arrays.copyOfRange(entry, 0, equals);
        byte[] value = java.util.Arrays.copyOfRange(entry, equals + 1, entry.length);
        ServedValues.Served origin = served.find(name, value, charset);
        if (origin == null) {
            return entry;
        }
        boolean sameName = origin.name().equals(new String(name, charset));
        if (!sameName && (value.length < MIN_RENAMED_VALUE_LEN || isPlainValue(value))) {
            return entry;
        }
        if (origin.reference() == null) {
            return sameName ? null : entry;
        }
        byte[] reference = origin.reference().getBytes(charset);
        byte[] replaced = new byte[equals + 1 + reference.length];
        System.arraycopy(entry, 0, replaced, 0, equals + 1);
        System.arraycopy(reference, 0, replaced, equals + 1, reference.length);
        return replaced;
    }

    private static boolean isPlainValue(byte[] value) {
        for (byte[] plain : plainValues) {
            if (java.util.Arrays.equals(plain, value)) {
                return true;
            }
        }
        return false;
    }

    private static boolean holdsReference(byte[] entry) {
        int equals = indexOf(entry, (byte) '=');
        if (equals < 0) {
            return false;
        }
        String value = new String(entry, equals + 1, entry.length - equals - 1, charset);
        return Resolver.isReference(value);
    }

    /**
     * Adds LD_PRELOAD and the ENVPROXY_* settings the child's environment lacks, so the child
     * resolves its references, and returns whether it added any.
     */
    private static boolean addMissingSettings(List<byte[]> entries) {
        boolean added = false;
        for (byte[] setting : settingsEntries) {
            int equals = indexOf(setting, (byte) '=');
            boolean present = false;
            for (byte[] entry : entries) {
                if (entry.length > equals && entry[equals] == '='
                        && java.util.Arrays.equals(entry, 0, equals, setting, 0, equals)) {
                    present = true;
                    break;
                }
            }
            if (!present) {
                entries.add(setting);
                added = true;
            }
        }
        return added;
    }

    private static int indexOf(byte[] bytes, byte wanted) {
        for (int i = 0; i < bytes.length; i++) {
            if (bytes[i] == wanted) {
                return i;
            }
        }
        return -1;
    }
}
