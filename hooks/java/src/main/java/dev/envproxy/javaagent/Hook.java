package dev.envproxy.javaagent;

import java.io.IOException;
import java.io.InputStream;
import java.lang.instrument.ClassDefinition;
import java.lang.instrument.Instrumentation;
import java.util.Collections;
import java.util.Map;
import java.util.Set;

/**
 * The javaagent entry point. libenvproxy.so adds {@code -javaagent:<this jar>} to
 * JAVA_TOOL_OPTIONS, so the JVM calls {@link #premain} before the program's main method.
 *
 * <p>The JVM copies the environment into java.lang.ProcessEnvironment once at start, so
 * System.getenv would return references. When the environment holds a reference, the hook
 * patches two java.base classes with Instrumentation.redefineClasses (no command-line flags):
 * ProcessEnvironment then reads System.getenv's map from {@link EnvironmentRedirects}, which
 * holds a {@link ResolvingEnvironment}, and ProcessImpl builds a child's environment through
 * {@link EnvironmentRedirects#toEnvironmentBlock}, which puts references back in place of the
 * values this JVM resolved. The JVM's own copy of the environment keeps the references, so
 * children started without a changed environment() map inherit them unchanged.
 */
public final class Hook {
    private static final String PROCESS_ENVIRONMENT = "java/lang/ProcessEnvironment";
    private static final String PROCESS_IMPL = "java/lang/ProcessImpl";
    private static final String REDIRECTS = "dev/envproxy/javaagent/EnvironmentRedirects";

    private Hook() {}

    public static void premain(String arguments, Instrumentation instrumentation) {
        try {
            install(instrumentation);
        } catch (Throwable failure) {
            // The program starts anyway; it reads references, as it would without the hook.
            Diag.line("the Java hook could not be installed, so System.getenv returns"
                    + " references: " + failure);
        }
    }

    private static void install(Instrumentation instrumentation) throws Exception {
        Map<String, String> raw = System.getenv();
        Settings settings = Settings.read(raw);
        if (!settings.enabled) {
            return;
        }
        if (!settings.lookupUnset && !holdsReference(raw)) {
            if (settings.debug) {
                Diag.line("the environment holds no reference; the Java hook stays inactive");
            }
            return;
        }

        Module javaBase = Object.class.getModule();
        Module hook = Hook.class.getModule();
        if (Hook.class.getClassLoader() != null) {
            throw new IllegalStateException("the hook classes were loaded by "
                    + Hook.class.getClassLoader() + ", not the boot loader, so java.base cannot"
                    + " link to them; keep the jar's name envproxy-javaagent.jar, which its"
                    + " Boot-Class-Path attribute names");
        }
        // java.base links to EnvironmentRedirects, and the hook calls a package-private method
        // of java.lang.
        instrumentation.redefineModule(javaBase, Set.of(hook), Map.of(),
                Map.of("java.lang", Set.of(hook)), Set.of(), Map.of());

        ServedValues served = new ServedValues();
        AgentClient agent = new AgentClient(settings);
        Resolver resolver = new Resolver(settings, agent, served);
        boolean unsetOnError = settings.onError == Settings.OnError.UNSET;
        EnvironmentRedirects.theUnmodifiableEnvironment =
                Collections.unmodifiableMap(new ResolvingEnvironment(raw, resolver, unsetOnError));
        EnvironmentRedirects.configure(raw, served, settings.charset);

        // ProcessImpl first, so that no child can start with a resolved value before the
        // environment resolves.
        Class<?> processImpl = Class.forName("java.lang.ProcessImpl", false, null);
        Class<?> processEnvironment = Class.forName("java.lang.ProcessEnvironment", false, null);
        byte[] impl = ClassPatch.retarget(classFile(PROCESS_IMPL), ClassPatch.TAG_METHODREF,
                PROCESS_ENVIRONMENT, "toEnvironmentBlock", "(Ljava/util/Map;[I)[B", REDIRECTS);
        instrumentation.redefineClasses(new ClassDefinition(processImpl, impl));
        byte[] environment = ClassPatch.retarget(classFile(PROCESS_ENVIRONMENT),
                ClassPatch.TAG_FIELDREF, PROCESS_ENVIRONMENT, "theUnmodifiableEnvironment",
                "Ljava/util/Map;", REDIRECTS);
        instrumentation.redefineClasses(new ClassDefinition(processEnvironment, environment));
        if (settings.debug) {
            Diag.line("Java hook installed; System.getenv resolves references through "
                    + settings.socketPath());
        }
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
