import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

/**
 * Reads environment variables the ways Java programs do, for the end-to-end tests of the Java
 * hook. Each line it prints is NAME=VALUE; the tests compare them with random secrets.
 *
 * <pre>
 * EnvProbe read NAME       System.getenv(NAME), System.getenv().get(NAME), iteration, and
 *                          whether the value is in /proc/self/environ
 * EnvProbe children NAME   the environments of children started with ProcessBuilder
 * EnvProbe loop NAME       System.getenv(NAME) every 50 ms, for the rotation test
 * EnvProbe property KEY    the system property KEY, set through JAVA_TOOL_OPTIONS by the test
 * </pre>
 */
public final class EnvProbe {
    public static void main(String[] args) throws Exception {
        String mode = args[0];
        String name = args[1];
        switch (mode) {
            case "read" -> read(name, "");
            case "child-read" -> read(name, "child.");
            case "children" -> children(name);
            case "loop" -> loop(name);
            case "property" -> System.out.println(name + "=" + System.getProperty(name));
            default -> throw new IllegalArgumentException("unknown mode " + mode);
        }
    }

    private static void read(String name, String prefix) throws IOException {
        String value = System.getenv(name);
        System.out.println(prefix + "getenv=" + value);
        System.out.println(prefix + "map=" + System.getenv().get(name));
        String iterated = null;
        for (Map.Entry<String, String> entry : System.getenv().entrySet()) {
            if (entry.getKey().equals(name)) {
                iterated = entry.getValue();
            }
        }
        System.out.println(prefix + "iterated=" + iterated);
        System.out.println(prefix + "contains=" + System.getenv().containsKey(name));
        System.out.println(prefix + "printed=" + System.getenv().toString().contains(
                name + "=" + value));
        System.out.println(prefix + "environ=" + (inOwnEnviron(value) ? "leak" : "clean"));
    }

    private static boolean inOwnEnviron(String value) throws IOException {
        if (value == null) {
            return false;
        }
        String environ = new String(Files.readAllBytes(Path.of("/proc/self/environ")),
                StandardCharsets.UTF_8);
        return environ.contains(value);
    }

    /** Starts /usr/bin/env and a Java child with several environment() maps. */
    private static void children(String name) throws Exception {
        String value = System.getenv(name);

        run("inherited", new ProcessBuilder("/usr/bin/env"));

        ProcessBuilder extra = new ProcessBuilder("/usr/bin/env");
        extra.environment().put("EXTRA", "1");
        run("extra", extra);

        ProcessBuilder copied = new ProcessBuilder("/usr/bin/env");
        copied.environment().put(name, value);
        copied.environment().put("RENAMED", value);
        run("copied", copied);

        ProcessBuilder replaced = new ProcessBuilder("/usr/bin/env");
        replaced.environment().clear();
        replaced.environment().put(name, value);
        run("replaced", replaced);

        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        ProcessBuilder javaChild = new ProcessBuilder(java, "-cp",
                System.getProperty("java.class.path"), "EnvProbe", "child-read", name);
        javaChild.environment().put("EXTRA", "1");
        javaChild.redirectError(ProcessBuilder.Redirect.INHERIT);
        run("java", javaChild);
    }

    /** Runs a child and prints each line of its output prefixed with its label. */
    private static void run(String label, ProcessBuilder builder) throws Exception {
        Process process = builder.start();
        try (InputStream out = process.getInputStream()) {
            String text = new String(out.readAllBytes(), StandardCharsets.UTF_8);
            for (String line : List.of(text.split("\n"))) {
                System.out.println(label + "." + line);
            }
        }
        int status = process.waitFor();
        if (status != 0) {
            throw new IllegalStateException(label + " child exited with " + status);
        }
    }

    private static void loop(String name) throws InterruptedException {
        for (int i = 0; i < 400; i++) {
            System.out.println(name + "=" + System.getenv(name));
            System.out.flush();
            Thread.sleep(50);
        }
    }
}
