//! The environment `envproxy run` gives the command.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use envproxy_proto::reference::LOCAL_SCHEME;

/// Variable that contains the agent socket path, read by the library and the CLI.
pub const SOCKET_VARIABLE: &str = "ENVPROXY_SOCKET";
pub const PRELOAD_VARIABLE: &str = "LD_PRELOAD";
/// Variable that makes the library ask the agent for names absent from the environment.
const LOOKUP_UNSET_VARIABLE: &str = "ENVPROXY_LOOKUP_UNSET";
/// Prefix of the variables that configure EnvProxy itself; the library never resolves them.
const OWN_PREFIX: &str = "ENVPROXY_";

/// The command's environment and the secret keys that could not be added to it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChildEnvironment {
    /// Variables in order: the inherited ones first, then the added references.
    pub variables: Vec<(OsString, OsString)>,
    /// Keys left out because they are not usable as variable names, start with `ENVPROXY_`, or
    /// name a variable that `envproxy run` sets itself. Each entry is the key and the reason.
    pub skipped: Vec<(String, &'static str)>,
}

/// Builds the command's environment from `inherited`.
///
/// Each key of the secrets file that `inherited` does not set becomes `KEY=envproxy:KEY`, so the
/// library resolves it on `getenv`. A variable the caller already set keeps its value.
/// `ENVPROXY_SOCKET` is set to `socket`. A `library` is appended to `LD_PRELOAD` unless it is
/// already listed there; with `None`, `LD_PRELOAD` stays as inherited.
pub fn build(
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
    keys: &[String],
    socket: &Path,
    library: Option<&Path>,
) -> ChildEnvironment {
    let mut environment = ChildEnvironment {
        variables: inherited.into_iter().collect(),
        skipped: Vec::new(),
    };
    // Names already set, so each key costs one hash lookup instead of a scan of the variables.
    let mut names: HashSet<OsString> = environment
        .variables
        .iter()
        .map(|(name, _)| name.clone())
        .collect();

    for key in keys {
        if key.is_empty() || key.contains(['=', '\0']) {
            environment
                .skipped
                .push((key.clone(), "it contains `=` or NUL or is empty"));
            continue;
        }
        if key.starts_with(OWN_PREFIX) {
            environment.skipped.push((
                key.clone(),
                "`ENVPROXY_*` names configure EnvProxy and are never resolved",
            ));
            continue;
        }
        if key == PRELOAD_VARIABLE {
            environment
                .skipped
                .push((key.clone(), "envproxy run sets this variable itself"));
            continue;
        }
        if !names.insert(OsString::from(key)) {
            continue;
        }
        let reference = format!("{LOCAL_SCHEME}{key}");
        environment
            .variables
            .push((OsString::from(key), OsString::from(reference)));
    }

    environment.set(SOCKET_VARIABLE, socket.as_os_str().to_os_string());
    if let Some(library) = library {
        let preload = append_preload(environment.get(OsStr::new(PRELOAD_VARIABLE)), library);
        environment.set(PRELOAD_VARIABLE, preload);
    }
    environment
}

impl ChildEnvironment {
    /// Sets `ENVPROXY_LOOKUP_UNSET=1`, so that the library asks the agent for names absent
    /// from the environment (each answer cached for the library's TTL, "not found" too). A
    /// value the caller set, `0` included, is kept.
    pub fn look_up_unset_names(&mut self) {
        if self.get(OsStr::new(LOOKUP_UNSET_VARIABLE)).is_none() {
            self.set(LOOKUP_UNSET_VARIABLE, OsString::from("1"));
        }
    }

    fn get(&self, name: &OsStr) -> Option<&OsStr> {
        self.variables
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_os_str())
    }

    fn set(&mut self, name: &str, value: OsString) {
        match self.variables.iter_mut().find(|(key, _)| key == name) {
            Some(entry) => entry.1 = value,
            None => self.variables.push((OsString::from(name), value)),
        }
    }
}

/// Returns `existing` with `library` appended, separated by a space. The dynamic loader splits
/// `LD_PRELOAD` at spaces and colons, so an entry equal to `library` in either form counts as
/// present.
pub fn append_preload(existing: Option<&OsStr>, library: &Path) -> OsString {
    let library = library.as_os_str().as_bytes();
    let Some(existing) = existing.filter(|value| !value.is_empty()) else {
        return OsString::from_vec(library.to_vec());
    };
    let bytes = existing.as_bytes();
    let present = bytes
        .split(|&b| b == b' ' || b == b':')
        .any(|entry| entry == library);
    if present {
        return existing.to_os_string();
    }
    let mut value = bytes.to_vec();
    value.push(b' ');
    value.extend_from_slice(library);
    OsString::from_vec(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn value<'e>(environment: &'e ChildEnvironment, name: &str) -> Option<&'e str> {
        environment
            .get(OsStr::new(name))
            .map(|v| v.to_str().unwrap())
    }

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn adds_references_for_unset_keys() {
        let environment = build(
            pairs(&[("PATH", "/bin"), ("DB_URL", "postgres://local")]),
            &keys(&["API_KEY", "DB_URL"]),
            Path::new("/run/a.sock"),
            Some(Path::new("/lib/libenvproxy.so")),
        );
        assert_eq!(value(&environment, "API_KEY"), Some("envproxy:API_KEY"));
        assert_eq!(value(&environment, "DB_URL"), Some("postgres://local"));
        assert_eq!(value(&environment, "PATH"), Some("/bin"));
        assert_eq!(value(&environment, "ENVPROXY_SOCKET"), Some("/run/a.sock"));
        assert_eq!(
            value(&environment, "LD_PRELOAD"),
            Some("/lib/libenvproxy.so")
        );
        assert!(environment.skipped.is_empty());
    }

    #[test]
    fn socket_variable_is_replaced() {
        let environment = build(
            pairs(&[("ENVPROXY_SOCKET", "/old.sock")]),
            &[],
            Path::new("/new.sock"),
            Some(Path::new("/l.so")),
        );
        assert_eq!(value(&environment, "ENVPROXY_SOCKET"), Some("/new.sock"));
        let count = environment
            .variables
            .iter()
            .filter(|(k, _)| k == "ENVPROXY_SOCKET")
            .count();
        assert_eq!(count, 1);
    }

    #[test]
    fn preload_is_appended_once() {
        let library = Path::new("/lib/libenvproxy.so");
        let cases = [
            ("", "/lib/libenvproxy.so"),
            ("/a.so", "/a.so /lib/libenvproxy.so"),
            ("/a.so:/b.so", "/a.so:/b.so /lib/libenvproxy.so"),
            ("/a.so /lib/libenvproxy.so", "/a.so /lib/libenvproxy.so"),
            ("/lib/libenvproxy.so:/a.so", "/lib/libenvproxy.so:/a.so"),
            (
                "/other/libenvproxy.so",
                "/other/libenvproxy.so /lib/libenvproxy.so",
            ),
        ];
        for (existing, expected) in cases {
            let environment = build(
                pairs(&[("LD_PRELOAD", existing)]),
                &[],
                Path::new("/s"),
                Some(library),
            );
            assert_eq!(
                value(&environment, "LD_PRELOAD"),
                Some(expected),
                "{existing:?}"
            );
        }
    }

    #[test]
    fn without_library_preload_is_inherited() {
        let environment = build(
            pairs(&[("LD_PRELOAD", "/a.so")]),
            &keys(&["API_KEY"]),
            Path::new("/s"),
            None,
        );
        assert_eq!(value(&environment, "LD_PRELOAD"), Some("/a.so"));
        assert_eq!(value(&environment, "API_KEY"), Some("envproxy:API_KEY"));

        let environment = build(Vec::new(), &[], Path::new("/s"), None);
        assert_eq!(value(&environment, "LD_PRELOAD"), None);
        assert_eq!(value(&environment, "ENVPROXY_SOCKET"), Some("/s"));
    }

    #[test]
    fn unusable_keys_are_skipped() {
        let environment = build(
            Vec::new(),
            &keys(&["A=B", "ENVPROXY_SOCKET", "LD_PRELOAD", "OK"]),
            Path::new("/s"),
            Some(Path::new("/l.so")),
        );
        let skipped: Vec<&str> = environment
            .skipped
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(skipped, ["A=B", "ENVPROXY_SOCKET", "LD_PRELOAD"]);
        let reasons: Vec<&str> = environment.skipped.iter().map(|(_, r)| *r).collect();
        assert!(reasons[1].contains("configure EnvProxy"), "{}", reasons[1]);
        assert!(reasons[1].contains("never resolved"), "{}", reasons[1]);
        assert_eq!(reasons[2], "envproxy run sets this variable itself");
        assert_eq!(value(&environment, "OK"), Some("envproxy:OK"));
        assert_eq!(value(&environment, "ENVPROXY_SOCKET"), Some("/s"));
        assert_eq!(value(&environment, "LD_PRELOAD"), Some("/l.so"));
    }

    #[test]
    fn look_up_unset_is_added_unless_set() {
        let mut environment = build(pairs(&[("PATH", "/bin")]), &[], Path::new("/s"), None);
        environment.look_up_unset_names();
        assert_eq!(value(&environment, "ENVPROXY_LOOKUP_UNSET"), Some("1"));

        let mut environment = build(
            pairs(&[("ENVPROXY_LOOKUP_UNSET", "0")]),
            &[],
            Path::new("/s"),
            None,
        );
        environment.look_up_unset_names();
        assert_eq!(value(&environment, "ENVPROXY_LOOKUP_UNSET"), Some("0"));
        let count = environment
            .variables
            .iter()
            .filter(|(k, _)| k == "ENVPROXY_LOOKUP_UNSET")
            .count();
        assert_eq!(count, 1);
    }

    #[test]
    fn many_keys_build_in_linear_time() {
        // 50,000 keys and as many inherited variables: a scan of the variables per key makes
        // billions of comparisons and takes many seconds, but one hash lookup per key does not.
        const COUNT: usize = 50_000;
        let inherited: Vec<(OsString, OsString)> = (0..COUNT)
            .map(|i| {
                (
                    OsString::from(format!("INHERITED_{i}")),
                    OsString::from("x"),
                )
            })
            .collect();
        let mut secret_keys: Vec<String> = (0..COUNT).map(|i| format!("KEY_{i}")).collect();
        secret_keys.push("INHERITED_7".to_string());

        let started = std::time::Instant::now();
        let environment = build(
            inherited,
            &secret_keys,
            Path::new("/s"),
            Some(Path::new("/l.so")),
        );
        let elapsed = started.elapsed();

        assert_eq!(environment.variables.len(), 2 * COUNT + 2);
        assert_eq!(value(&environment, "INHERITED_7"), Some("x"));
        assert_eq!(value(&environment, "KEY_49999"), Some("envproxy:KEY_49999"));
        assert!(
            elapsed < std::time::Duration::from_secs(2),
            "building took {elapsed:?}"
        );
    }
}
