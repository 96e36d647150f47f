/**
 * The Java program of envproxy-bench's Java benchmarks. Every mode checks the values it reads
 * and exits with status 3 on a wrong one, so a failure cannot pass for a fast result.
 *
 * <pre>
 * EnvBench start                     nothing: a JVM start the size of java -version
 * EnvBench version                   prints version=java.version
 * EnvBench read NAME EXPECTED        one System.getenv(NAME)
 * EnvBench getenv REF REF_EXPECTED PLAIN PLAIN_EXPECTED CALLS ROUNDS
 *                                    ns per call of System.getenv(REF) and System.getenv(PLAIN),
 *                                    one line per round: ref_ns=X plain_ns=Y
 * </pre>
 */
public final class EnvBench {
    private static final int WRONG_VALUE = 3;

    /**
     * Does nothing. The benchmark also loads this class as an empty javaagent, to measure what
     * any agent costs a JVM start.
     */
    public static void premain(String arguments, java.lang.instrument.Instrumentation unused) {}

    public static void main(String[] args) {
        switch (args[0]) {
            case "start" -> { }
            case "version" -> System.out.println("version=" + System.getProperty("java.version"));
            case "read" -> check(args[1], System.getenv(args[1]), args[2]);
            case "getenv" -> getenv(args);
            default -> throw new IllegalArgumentException("unknown mode " + args[0]);
        }
    }

    private static void getenv(String[] args) {
        String ref = args[1];
        String refExpected = args[2];
        String plain = args[3];
        String plainExpected = args[4];
        int calls = Integer.parseInt(args[5]);
        int rounds = Integer.parseInt(args[6]);
        // One untimed pass of each loop lets the JIT compile both before any timed one.
        loop(ref, refExpected, calls);
        loop(plain, plainExpected, calls);
        for (int round = 0; round < rounds; round++) {
            long refNanos;
            long plainNanos;
            // The loop that goes first alternates, so drift of the machine affects both alike.
            if (round % 2 == 0) {
                refNanos = loop(ref, refExpected, calls);
                plainNanos = loop(plain, plainExpected, calls);
            } else {
                plainNanos = loop(plain, plainExpected, calls);
                refNanos = loop(ref, refExpected, calls);
            }
            System.out.println("ref_ns=" + (double) refNanos / calls
                    + " plain_ns=" + (double) plainNanos / calls);
        }
    }

    /** Returns the nanoseconds of {@code calls} calls of System.getenv(name). */
    private static long loop(String name, String expected, int calls) {
        long lengths = 0;
        String last = null;
        long started = System.nanoTime();
        for (int i = 0; i < calls; i++) {
            last = System.getenv(name);
            lengths += last.length();
        }
        long elapsed = System.nanoTime() - started;
        // Using every result keeps the JIT from removing the calls.
        check(name, last, expected);
        if (lengths != (long) calls * expected.length()) {
            fail(name + " returned a value of another length during the loop");
        }
        return elapsed;
    }

    private static void check(String name, String value, String expected) {
        if (!expected.equals(value)) {
            fail(name + " did not return the expected value");
        }
    }

    private static void fail(String message) {
        System.err.println("EnvBench: " + message);
        System.exit(WRONG_VALUE);
    }
}
