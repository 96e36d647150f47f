//! The Java hook: `envproxy-javaagent.jar`, built from `src/main/java` by this crate's build
//! script with the JDK's `javac` and `jar`.
//!
//! The build writes the jar to `hooks/java/envproxy-javaagent.jar` in the source tree, where
//! `libenvproxy.so` finds it through its hooks directory. Without a JDK the build succeeds with
//! a warning and [`BUILT_JAR`] is `None`.

/// File name of the jar inside the hooks directory's `java/` folder. The jar's manifest names
/// itself on the boot class path, so the file must keep this name.
pub const JAR_FILE_NAME: &str = "envproxy-javaagent.jar";

/// Absolute path of the jar this build wrote, or `None` when no JDK was found.
pub const BUILT_JAR: Option<&str> = option_env!("ENVPROXY_JAVA_HOOK_JAR");

/// The reason the jar was not built, when [`BUILT_JAR`] is `None`.
pub const BUILD_PROBLEM: Option<&str> = option_env!("ENVPROXY_JAVA_HOOK_PROBLEM");
