package dev.envproxy.javaagent;

import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;

/** The hook's stderr lines, in the library's format. It never writes to stdout, and never a value. */
final class Diag {
    /** Maximum characters of a name or reference quoted in a line. */
    private static final int MAX_QUOTED_CHARS = 200;

    /**
     * File descriptor 2 itself, not System.err, which a program may have replaced with its own
     * stream or logger.
     */
    private static final FileOutputStream STDERR = new FileOutputStream(FileDescriptor.err);

    private Diag() {}

    /** Writes {@code envproxy[PID]: MESSAGE} and a newline to stderr with one write call. */
    static void line(String message) {
        String text = "envproxy[" + ProcessHandle.current().pid() + "]: " + message + "\n";
        byte[] bytes = text.getBytes(StandardCharsets.UTF_8);
        synchronized (STDERR) {
            try {
                STDERR.write(bytes);
            } catch (IOException closed) {
                // stderr is closed or full: the line is lost, as the library's would be.
            }
        }
    }

    /**
     * Returns text for a stderr line: control characters escaped as \xNN, so a line stays one
     * line and sends no terminal escape sequences, and at most 200 characters followed by
     * "..." when longer.
     */
    static String printable(String text) {
        StringBuilder out = new StringBuilder();
        int count = 0;
        for (int i = 0; i < text.length(); ) {
            int c = text.codePointAt(i);
            i += Character.charCount(c);
            if (count == MAX_QUOTED_CHARS) {
                out.append("...");
                break;
            }
            if (Character.isISOControl(c)) {
                for (byte b : new String(Character.toChars(c)).getBytes(StandardCharsets.UTF_8)) {
                    out.append(String.format("\\x%02x", b & 0xff));
                }
            } else {
                out.appendCodePoint(c);
            }
            count++;
        }
        return out.toString();
    }
}
