package dev.envproxy.javaagent;

import java.io.IOException;
import java.io.InputStream;
import java.util.Collections;
import java.util.Map;

/**
 * The hook's entry points, which libenvproxy.so's JVMTI agent calls. libenvproxy.so adds
 * {@code -agentpath:<libenvproxy.so>=<this jar>} to JAVA_TOOL_OPTIONS, so the JVM loads the
 * library as a native agent, which appends this jar to the boot class path.
 *
 * <p>The JVM copies the environment into java.lang.ProcessEnvironment once at start, so
 * System.getenv would return references. When the VM has started, before the program's main
 * method runs, the agent calls {@link #install}. When the environment holds a reference, it
 * returns a {@link ResolvingEnvironment}, which the agent stores in ProcessEnvironment's field
 * {@code theUnmodifiableEnvironment}, the map System.getenv reads.
 *
 * <p>At the first child start (a JVMTI breakpoint at the start of ProcessBuilder's private
 * start method, before it calls ProcessImpl), the agent calls {@link #patchProcessImpl} and
 * redefines java.lang.ProcessImpl so that it builds a child's environment through
 * {@link EnvironmentRedirects#toEnvironmentBlock}, which puts references back in place of the
 * values this JVM resolved. The redefinition waits for that moment because it costs a JVM about
 * 10 ms of CPU, which a program that starts no child never pays. The JVM's own copy of the
 * environment keeps the references, so children started without a changed environment() map
 * inherit them unchanged.
 */
public final class Hook {
    private static final String PROCESS_ENVIRONMENT = "java/lang/ProcessEnvironment";
    private static final String PROCESS_IMPL = "java/lang/ProcessImpl";
    private static final String REDIRECTS = "dev/envproxy/javaagent/EnvironmentRedirects";

    private Hook() {}

    /**
     * Prepares the hook and returns what the agent changes, or null when the hook stays
     * inactive: disabled, no reference in the environment, or a failure, which gets one stderr
     * line. The program then reads references. The array holds, in this order, the class
     * java.lang.ProcessEnvironment, the map for its field theUnmodifiableEnvironment, the
     * module java.base and the hook's module (the boot loader's unnamed module); the agent
     * reads these positions.
     */
    public static Object[] install() {
        try {
            return prepare();
        } catch (Throwable failure) {
            // The program starts anyway; it reads references, as it would without the hook.
            Diag.line("the Java hook could not be installed, so System.getenv returns"
                    + " references: " + failure);
            return null;
        }
    }

    /**
     * Returns the class file of java.lang.ProcessImpl with its call of
     * ProcessEnvironment.toEnvironmentBlock pointed at {@link EnvironmentRedirects}, or null
     * after one stderr line when that fails. Children then receive the values this JVM
     * resolved and copied into their environment.
     */
    public static byte[] patchProcessImpl() {
        try {
            return ClassPatch.retarget(classFile(PROCESS_IMPL), ClassPatch.TAG_METHODREF,
                    PROCESS_ENVIRONMENT, "toEnvironmentBlock", "(Ljava/util/Map;[I)[B",
                    REDIRECTS);
        } catch (Throwable failure) {
            Diag.line("the Java hook could not patch java.lang.ProcessImpl, so a child whose"
                    + " environment a program filled from System.getenv receives values, not"
                    + " references: " + failure);
            return null;
        }
    }

    private static Object[] prepare() throws Exception {
        Map<String, String> raw = System.getenv();
        Settings settings = Settings.read(raw);
        if (!settings.enabled) {
            return null;
        }
        if (!settings.lookupUnset && !holdsReference(raw)) {
            if (settings.debug) {
                Diag.line("the environment holds no reference; the Java hook stays inactive");
            }
            return null;
        }
        if (Hook.class.getClassLoader() != null) {
            throw new IllegalStateException("the hook classes were loaded by "
                    + Hook.class.getClassLoader() + ", not the boot loader, so java.base cannot"
                    + " link to them");
        }

        ServedValues served = new ServedValues();
        AgentClient agent = new AgentClient(settings);
        Resolver resolver = new Resolver(settings, agent, served);
        boolean unsetOnError = settings.onError == Settings.OnError.UNSET;
        Map<String, String> resolving =
                Collections.unmodifiableMap(new ResolvingEnvironment(raw, resolver, unsetOnError));
        EnvironmentRedirects.configure(raw, served, settings.charset);
        // Loaded, not initialised: ProcessEnvironment is initialised already, by getenv above.
        Class<?> processEnvironment = Class.forName("java.lang.ProcessEnvironment", false, null);
        if (settings.debug) {
            Diag.line("Java hook installed; System.getenv resolves references through "
                    + settings.socketPath());
        }
        return new Object[] {processEnvironment, resolving, Object.class.getModule(),
            Hook.class.getModule()};
    }

    private static boolean holdsReference(Map<String, String> raw) {
        for (Map.Entry<String, String> entry : raw.entrySet()) {
            if (Resolver.isReference(entry.getValue())
                    && !entry.getKey().startsWith(Resolver.OWN_PREFIX)) {
                return true;
            }
        }
        return false;
    }

    /** Reads a java.base class file as the runtime image holds it. */
    private static byte[] classFile(String internalName) throws IOException {
        String resource = internalName + ".class";
        try (InputStream in = Object.class.getModule().getResourceAsStream(resource)) {
            if (in == null) {
                throw new IOException("the runtime image has no " + resource);
            }
            return in.readAllBytes();
        }
    }
}
