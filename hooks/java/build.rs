//! Compiles the javaagent with `javac --release 17` and packs it with `jar`, both taken from
//! `JAVA_HOME/bin`, else from `PATH`. Nothing is downloaded: the agent uses the JDK alone.
//!
//! The jar goes to `OUT_DIR`, then is copied to `hooks/java/envproxy-javaagent.jar` (ignored
//! by git), where `libenvproxy.so` looks for it in a source checkout.
//!
//! The build still succeeds without a JDK, with a `javac` older than 17, when `javac` or `jar`
//! fails, or when the new jar lacks the hook class. It then prints one warning with the reason
//! and what to do, sets `ENVPROXY_JAVA_HOOK_PROBLEM`, and leaves an earlier jar in `hooks/java`
//! as it is.

use std::env;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const JAR_FILE_NAME: &str = "envproxy-javaagent.jar";

fn main() {
    let crate_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    println!(
        "cargo:rerun-if-changed={}",
        crate_dir.join("src/main/java").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        crate_dir.join("MANIFEST.MF").display()
    );
    // NOTE: the installed jar is not watched, because the copy written below would make every
    // build run this script again. After deleting it, `touch hooks/java/MANIFEST.MF` rebuilds it.
    println!("cargo:rerun-if-env-changed=JAVA_HOME");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");

    if let Err(problem) = build_jar(&crate_dir, &out_dir) {
        let installed = crate_dir.join(JAR_FILE_NAME);
        let effect = if installed.is_file() {
            format!(
                "the jar from an earlier build is kept at {}",
                installed.display()
            )
        } else {
            "Java programs read references".to_string()
        };
        let fix = match problem {
            BuildProblem::Jdk(_) => {
                "Install JDK 17 or later (for example `apt-get install openjdk-17-jdk-headless`) \
                 or set JAVA_HOME to one"
            }
            BuildProblem::Tool(_) => "Fix that failure or set JAVA_HOME to another JDK",
        };
        let problem = format!(
            "the Java hook jar was not built, so {effect}: {}. {fix}, then \
             `touch hooks/java/MANIFEST.MF` and build again",
            problem.text()
        )
        .replace(['\n', '\r'], " ");
        println!("cargo:warning={problem}");
        println!("cargo:rustc-env=ENVPROXY_JAVA_HOOK_PROBLEM={problem}");
    }
}

/// The reason the jar was not built.
enum BuildProblem {
    /// No JDK, or one older than 17: installing JDK 17 or later fixes it.
    Jdk(String),
    /// A JDK tool failed or wrote an invalid jar, for a reason other than its version.
    Tool(String),
}

impl BuildProblem {
    fn text(&self) -> &str {
        match self {
            BuildProblem::Jdk(text) | BuildProblem::Tool(text) => text,
        }
    }
}

/// Compiles and packs the jar and copies it into `hooks/java`, or returns why it could not.
/// The copy in `hooks/java` is replaced only when every step succeeded and the new jar
/// contains the hook class.
fn build_jar(crate_dir: &Path, out_dir: &Path) -> Result<(), BuildProblem> {
    let sources_dir = crate_dir.join("src/main/java");
    let manifest = crate_dir.join("MANIFEST.MF");
    let installed = crate_dir.join(JAR_FILE_NAME);
    let (Some(javac), Some(jar)) = (jdk_tool("javac"), jdk_tool("jar")) else {
        return Err(BuildProblem::Jdk(
            "no JDK found (javac and jar in JAVA_HOME/bin or on PATH)".to_string(),
        ));
    };
    check_javac_version(&javac)?;

    let classes = out_dir.join("classes");
    let _ = fs::remove_dir_all(&classes);
    fs::create_dir_all(&classes).expect("create the classes directory in OUT_DIR");
    let mut sources = Vec::new();
    collect_java_files(&sources_dir, &mut sources);
    sources.sort();
    // `-XDstringConcat=inline` compiles `+` on strings to StringBuilder calls. The default,
    // invokedynamic, costs several milliseconds of JVM start the first time it runs.
    run(Command::new(&javac)
        .args(["--release", "17", "-Xlint:all", "-XDstringConcat=inline"])
        .args(["-encoding", "UTF-8", "-d"])
        .arg(&classes)
        .args(&sources))
    .map_err(BuildProblem::Tool)?;

    let built = out_dir.join(JAR_FILE_NAME);
    let _ = fs::remove_file(&built);
    let mut pack = Command::new(&jar);
    pack.arg("--create")
        .arg("--file")
        .arg(&built)
        .arg("--manifest")
        .arg(&manifest);
    // With SOURCE_DATE_EPOCH, every entry carries that time instead of the time of this build,
    // so the same commit gives the same jar.
    if let Some(epoch) = env::var_os("SOURCE_DATE_EPOCH") {
        match epoch
            .to_str()
            .and_then(|text| text.trim().parse::<i64>().ok())
        {
            Some(seconds) => {
                pack.arg(format!("--date={}", zip_timestamp(seconds)));
            }
            None => println!(
                "cargo:warning=SOURCE_DATE_EPOCH={epoch:?} is not a number of seconds, so the \
                 Java hook jar carries the build time"
            ),
        }
    }
    run(pack.arg("-C").arg(&classes).arg(".")).map_err(BuildProblem::Tool)?;
    check_jar(&built, &jar).map_err(BuildProblem::Tool)?;

    // Written under another name and renamed, so a JVM starting meanwhile never opens half a jar.
    let staging = crate_dir.join(format!(".{JAR_FILE_NAME}.{}", std::process::id()));
    fs::copy(&built, &staging).expect("copy the jar into hooks/java");
    fs::rename(&staging, &installed).expect("rename the jar into place");
    println!(
        "cargo:rustc-env=ENVPROXY_JAVA_HOOK_JAR={}",
        installed.display()
    );
    Ok(())
}

/// Fails unless `javac --version` runs and reports version 17 or later, which `--release 17`
/// needs.
fn check_javac_version(javac: &Path) -> Result<(), BuildProblem> {
    let mut command = Command::new(javac);
    command.arg("--version");
    let output = command
        .output()
        .map_err(|err| BuildProblem::Tool(format!("cannot run {}: {err}", javac.display())))?;
    if !output.status.success() {
        return Err(BuildProblem::Tool(failure(&command, &output)));
    }
    // javac 9 and later print `javac 17.0.15`. javac 8 rejects `--version`.
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.split_whitespace().nth(1).unwrap_or_default();
    let major = version
        .split(['.', '-', '+'])
        .next()
        .and_then(|major| major.parse::<u32>().ok());
    match major {
        Some(major) if major >= 17 => Ok(()),
        Some(_) => Err(BuildProblem::Jdk(format!(
            "{} is version {version}, and the hook needs 17 or later",
            javac.display()
        ))),
        None => Err(BuildProblem::Jdk(format!(
            "`{} --version` printed {:?}, not a javac version",
            javac.display(),
            text.trim()
        ))),
    }
}

/// Class that `libenvproxy.so` loads from the jar.
const HOOK_CLASS_ENTRY: &str = "dev/envproxy/javaagent/Hook.class";

/// Fails unless `built` starts with a zip local file header and the JDK's `jar --list` shows
/// [`HOOK_CLASS_ENTRY`] in it, so a `jar` tool that exits 0 after writing a bad file never
/// replaces a working jar.
fn check_jar(built: &Path, jar: &Path) -> Result<(), String> {
    let mut magic = [0u8; 4];
    let read = fs::File::open(built).and_then(|mut file| file.read_exact(&mut magic));
    if let Err(err) = read {
        return Err(format!(
            "{} exited 0 but {} cannot be read: {err}",
            jar.display(),
            built.display()
        ));
    }
    if magic != *b"PK\x03\x04" {
        return Err(format!(
            "{} exited 0 but wrote {}, which is not a jar (it does not start with a zip \
             local file header)",
            jar.display(),
            built.display()
        ));
    }
    let mut list = Command::new(jar);
    list.arg("--list").arg("--file").arg(built);
    let output = list
        .output()
        .map_err(|err| format!("cannot run {}: {err}", jar.display()))?;
    if !output.status.success() {
        return Err(format!(
            "the new jar {} cannot be listed: {}",
            built.display(),
            failure(&list, &output)
        ));
    }
    let listed = String::from_utf8_lossy(&output.stdout);
    if !listed.lines().any(|line| line.trim() == HOOK_CLASS_ENTRY) {
        return Err(format!(
            "{} exited 0 but wrote {}, which does not contain {HOOK_CLASS_ENTRY}",
            jar.display(),
            built.display()
        ));
    }
    Ok(())
}

/// Formats `seconds` since 1970 as the UTC time `jar --date` takes, such as
/// `2023-11-14T22:13:20Z`. Zip entries cannot hold times outside 1980 to 2099, which `jar`
/// rejects, so earlier and later times are moved to the nearest end (`SOURCE_DATE_EPOCH=0` gives
/// 1980-01-01T00:00:02Z).
fn zip_timestamp(seconds: i64) -> String {
    const EARLIEST: i64 = 315_532_802; // 1980-01-01T00:00:02Z
    const LATEST: i64 = 4_102_444_799; // 2099-12-31T23:59:59Z
    let seconds = seconds.clamp(EARLIEST, LATEST);
    let (days, time) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Days since 1970-01-01 to a Gregorian date, counted in 400-year eras from 0000-03-01.
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3600,
        time / 60 % 60,
        time % 60
    )
}

/// Returns `JAVA_HOME/bin/<tool>` when it exists, else `<tool>` when it runs from `PATH`. A
/// `JAVA_HOME` without the tool gets a warning, because the JDK on `PATH` may be another one.
fn jdk_tool(tool: &str) -> Option<PathBuf> {
    if let Some(home) = env::var_os("JAVA_HOME").filter(|home| !home.is_empty()) {
        let path = Path::new(&home).join("bin").join(tool);
        if path.is_file() {
            return Some(path);
        }
        println!(
            "cargo:warning=JAVA_HOME is set to {}, which has no bin/{tool}, so {tool} is \
             looked up on PATH",
            Path::new(&home).display()
        );
    }
    let runs = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    runs.then(|| PathBuf::from(tool))
}

fn collect_java_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()));
    for entry in entries {
        let path = entry.expect("read a directory entry").path();
        if path.is_dir() {
            collect_java_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "java") {
            out.push(path);
        }
    }
}

/// Runs `command`, and describes its failure with [`failure`] when it exits with an error.
fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|err| format!("cannot run {}: {err}", program_name(command)))?;
    if output.status.success() {
        return Ok(());
    }
    Err(failure(command, &output))
}

/// Describes a failed run: the program, its exit status and the first lines of its stderr.
fn failure(command: &Command, output: &Output) -> String {
    const STDERR_LINES: usize = 3;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first_lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .take(STDERR_LINES)
        .collect();
    let mut message = format!("{} failed with {}", program_name(command), output.status);
    if first_lines.is_empty() {
        message.push_str(" and printed nothing on stderr");
    } else {
        message.push_str(&format!(
            ", and its stderr begins: {}",
            first_lines.join(" / ")
        ));
    }
    message
}

fn program_name(command: &Command) -> String {
    Path::new(command.get_program()).display().to_string()
}
