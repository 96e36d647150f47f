import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

/**
 * Reads environment variables the ways Java programs do, for the end-to-end tests of the Java
 * hook. Each line it prints is NAME=VALUE; the tests compare them with random secrets.
 *
 * <pre>
 * EnvProbe read NAME       System.getenv(NAME), System.getenv().get(NAME), iteration, and
 *                          whether the value is in /proc/self/environ
 * EnvProbe children NAME   the environments of children started with ProcessBuilder
 * EnvProbe first-children NAME
 *                          the environments of children that 4 threads start at once, as the
 *                          JVM's first child starts, each with NAME's value copied into its
 *                          environment() map, then of one started with Runtime.exec and NAME's
 *                          value in its envp
 * EnvProbe loop NAME       System.getenv(NAME) every 50 ms, for the rotation test
 * EnvProbe property KEY    the system property KEY, set through JAVA_TOOL_OPTIONS by the test
 * </pre>
 *
 * As a Java agent ({@code -javaagent:probe.jar=NAME}, with {@code Premain-Class: EnvProbe}),
 * it prints {@code premain.getenv=} and NAME's value as {@code premain} reads it.
 */
public final class EnvProbe {
    public static void premain(String name) {
        System.out.println("premain.getenv=" + System.getenv(name));
    }

    public static void main(String[] args) throws Exception {
        String mode = args[0];
        String name = args[1];
        switch (mode) {
            case "read" -> read(name, "");
            case "child-read" -> read(name, "child.");
            case "children" -> children(name);
            case "first-children" -> firstChildren(name);
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

    /**
     * Starts children from 4 threads at once, so that the JVM's first child starts race each
     * other, then one with Runtime.exec. Each child's environment contains the value that
     * System.getenv returned.
     */
    private static void firstChildren(String name) throws Exception {
        String value = System.getenv(name);
        int threads = 4;
        CountDownLatch ready = new CountDownLatch(threads);
        List<Thread> started = new ArrayList<>();
        String[] outputs = new String[threads];
        Throwable[] failures = new Throwable[threads];
        for (int i = 0; i < threads; i++) {
            int index = i;
            Thread thread = new Thread(() -> {
                try {
                    ProcessBuilder builder = new ProcessBuilder("/usr/bin/env");
                    builder.environment().put(name, value);
                    ready.countDown();
                    ready.await();
                    outputs[index] = output(builder.start());
                } catch (Throwable failure) {
                    failures[index] = failure;
                }
            });
            thread.start();
            started.add(thread);
        }
        for (Thread thread : started) {
            thread.join();
        }
        for (int i = 0; i < threads; i++) {
            if (failures[i] != null) {
                throw new IllegalStateException("thread " + i + " failed", failures[i]);
            }
            print("thread" + i, outputs[i]);
        }
        Process exec = Runtime.getRuntime().exec(new String[] {"/usr/bin/env"},
                new String[] {name + "=" + value});
        print("exec", output(exec));
    }

    /** Returns a child's output after it exited with status 0. */
    private static String output(Process process) throws Exception {
        String text;
        try (InputStream out = process.getInputStream()) {
            text = new String(out.readAllBytes(), StandardCharsets.UTF_8);
        }
        int status = process.waitFor();
        if (status != 0) {
            throw new IllegalStateException("a child exited with " + status);
        }
        return text;
    }

    private static void print(String label, String text) {
        for (String line : List.of(text.split("\n"))) {
            System.out.println(label + "." + line);
        }
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
