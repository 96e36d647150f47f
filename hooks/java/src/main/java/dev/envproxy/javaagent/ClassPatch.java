package dev.envproxy.javaagent;

import java.io.ByteArrayOutputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * Points one field or method reference of a class file at another class. The constant pool
 * gets two new entries at its end (the new class's name and its Class entry) and the matching
 * Fieldref or Methodref entries get the new class index. The indices of all other entries stay
 * the same, so the bytecode, attributes and stack maps need no change, and no bytecode library
 * is needed (Java 17 has no class-file API).
 *
 * <p>The layout of the class file is that of the JVM Specification, chapter 4.
 */
final class ClassPatch {
    static final int TAG_UTF8 = 1;
    static final int TAG_INTEGER = 3;
    static final int TAG_FLOAT = 4;
    static final int TAG_LONG = 5;
    static final int TAG_DOUBLE = 6;
    static final int TAG_CLASS = 7;
    static final int TAG_STRING = 8;
    static final int TAG_FIELDREF = 9;
    static final int TAG_METHODREF = 10;
    static final int TAG_INTERFACE_METHODREF = 11;
    static final int TAG_NAME_AND_TYPE = 12;
    static final int TAG_METHOD_HANDLE = 15;
    static final int TAG_METHOD_TYPE = 16;
    static final int TAG_DYNAMIC = 17;
    static final int TAG_INVOKE_DYNAMIC = 18;
    static final int TAG_MODULE = 19;
    static final int TAG_PACKAGE = 20;

    private ClassPatch() {}

    /**
     * Returns {@code classFile} with every reference of kind {@code tag} (Fieldref or
     * Methodref) to {@code owner.name:descriptor} pointing at class {@code newOwner} instead.
     * Class names are internal names, such as {@code java/lang/ProcessEnvironment}.
     *
     * @throws IllegalArgumentException when the class file has no such reference
     */
    static byte[] retarget(byte[] classFile, int tag, String owner, String name,
            String descriptor, String newOwner) {
        ByteBuffer in = ByteBuffer.wrap(classFile);
        if (in.getInt() != 0xCAFEBABE) {
            throw new IllegalArgumentException("not a class file (no 0xCAFEBABE magic)");
        }
        in.getShort();
        in.getShort();
        int count = in.getShort() & 0xffff;
        int poolStart = in.position();

        // Offsets of each entry's first byte after the tag, and the tags, by index.
        int[] offsets = new int[count];
        int[] tags = new int[count];
        for (int index = 1; index < count; index++) {
            int entryTag = in.get() & 0xff;
            tags[index] = entryTag;
            offsets[index] = in.position();
            in.position(in.position() + entrySize(in, entryTag));
            if (entryTag == TAG_LONG || entryTag == TAG_DOUBLE) {
                index++;
            }
        }
        int poolEnd = in.position();

        List<Integer> matches = new ArrayList<>();
        for (int index = 1; index < count; index++) {
            if (tags[index] != tag) {
                continue;
            }
            int classIndex = u2(classFile, offsets[index]);
            int nameAndType = u2(classFile, offsets[index] + 2);
            boolean same = className(classFile, offsets, tags, classIndex).equals(owner)
                    && utf8(classFile, offsets, tags, u2(classFile, offsets[nameAndType]))
                            .equals(name)
                    && utf8(classFile, offsets, tags, u2(classFile, offsets[nameAndType] + 2))
                            .equals(descriptor);
            if (same) {
                matches.add(index);
            }
        }
        if (matches.isEmpty()) {
            throw new IllegalArgumentException("the class file has no reference to " + owner
                    + "." + name + ":" + descriptor);
        }

        byte[] patchedPool = java.util.Arrays.copyOfRange(classFile, poolStart, poolEnd);
        int newClassIndex = count + 1;
        for (int index : matches) {
            int at = offsets[index] - poolStart;
            patchedPool[at] = (byte) (newClassIndex >> 8);
            patchedPool[at + 1] = (byte) newClassIndex;
        }
        try {
            ByteArrayOutputStream bytes = new ByteArrayOutputStream(classFile.length + 64);
            DataOutputStream out = new DataOutputStream(bytes);
            out.write(classFile, 0, 8);
            out.writeShort(count + 2);
            out.write(patchedPool);
            out.writeByte(TAG_UTF8);
            out.writeUTF(newOwner);
            out.writeByte(TAG_CLASS);
            out.writeShort(count);
            out.write(classFile, poolEnd, classFile.length - poolEnd);
            return bytes.toByteArray();
        } catch (IOException impossible) {
            throw new IllegalStateException("writing to a byte array failed", impossible);
        }
    }

    /** Returns the size of an entry's body, after its tag byte. */
    private static int entrySize(ByteBuffer in, int tag) {
        return switch (tag) {
            case TAG_UTF8 -> 2 + (in.getShort(in.position()) & 0xffff);
            case TAG_CLASS, TAG_STRING, TAG_METHOD_TYPE, TAG_MODULE, TAG_PACKAGE -> 2;
            case TAG_METHOD_HANDLE -> 3;
            case TAG_INTEGER, TAG_FLOAT, TAG_FIELDREF, TAG_METHODREF, TAG_INTERFACE_METHODREF,
                    TAG_NAME_AND_TYPE, TAG_DYNAMIC, TAG_INVOKE_DYNAMIC -> 4;
            case TAG_LONG, TAG_DOUBLE -> 8;
            default -> throw new IllegalArgumentException("unknown constant pool tag " + tag);
        };
    }

    private static int u2(byte[] bytes, int offset) {
        return ((bytes[offset] & 0xff) << 8) | (bytes[offset + 1] & 0xff);
    }

    private static String className(byte[] bytes, int[] offsets, int[] tags, int index) {
        if (tags[index] != TAG_CLASS) {
            throw new IllegalArgumentException("constant pool entry " + index + " is no Class");
        }
        return utf8(bytes, offsets, tags, u2(bytes, offsets[index]));
    }

    private static String utf8(byte[] bytes, int[] offsets, int[] tags, int index) {
        if (tags[index] != TAG_UTF8) {
            throw new IllegalArgumentException("constant pool entry " + index + " is no Utf8");
        }
        int length = u2(bytes, offsets[index]);
        // Class and member names here are ASCII, where modified UTF-8 equals UTF-8.
        return new String(bytes, offsets[index] + 2, length, StandardCharsets.UTF_8);
    }
}
