//! `envproxy status`: whether an agent responds, and how it is set up.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use envproxy_agent::status::{HttpInfo, KubeInfo, VaultInfo};
use envproxy_agent::AgentStatus;

use crate::client::{self, ClientError, IO_TIMEOUT};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Agent socket [default: the per-user socket].
    #[arg(long, value_name = "PATH", env = "ENVPROXY_SOCKET")]
    socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// One `name: value` line per field.
    Text,
    /// The agent's status JSON as it sent it.
    Json,
}

/// Prints the agent's status. Returns 0, or 1 with a one-line reason on stderr when no agent
/// responds.
pub fn run(args: StatusArgs) -> i32 {
    let socket = args
        .socket
        .unwrap_or_else(envproxy_agent::default_socket_path);
    let (status, json) = match client::fetch_status_json(&socket, IO_TIMEOUT) {
        Ok(fetched) => fetched,
        Err(err @ (ClientError::NoSocket { .. } | ClientError::Refused { .. })) => {
            eprintln!(
                "envproxy: {err}; start an agent with `envproxy-agent --secrets FILE --socket {}`, \
                 or point --socket or ENVPROXY_SOCKET at a running agent",
                socket.display()
            );
            return 1;
        }
        Err(err) => {
            eprintln!("envproxy: {err}");
            return 1;
        }
    };
    let text = match args.output {
        Output::Json => format!("{json}\n"),
        Output::Text => render(&status, unix_now()),
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => 0,
        // A reader that stopped early, such as `head`, is not an error.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(err) => {
            eprintln!("envproxy: cannot write the status to stdout: {err}");
            1
        }
    }
}

/// Formats the status as aligned `name: value` lines.
fn render(status: &AgentStatus, now_unix: u64) -> String {
    let mut rows = vec![
        ("reachable", "yes".to_string()),
        ("socket", status.socket.display().to_string()),
        ("mode", status.mode.clone()),
        ("version", status.version.clone()),
        ("pid", status.pid.to_string()),
        ("uptime", format_duration(status.uptime_secs)),
    ];
    // The HTTP and Kubernetes default backends are shown with their own rows below.
    match &status.backend {
        Some(backend) if backend.kind == "file" => {
            let path = backend.path.as_deref().unwrap_or(Path::new("?"));
            let reload_age = now_unix.saturating_sub(backend.last_reload_unix.unwrap_or(0));
            rows.extend([
                ("backend", format!("{} {}", backend.kind, path.display())),
                ("keys loaded", backend.keys_loaded.to_string()),
                (
                    "last reload",
                    format!("{} ago", format_duration(reload_age)),
                ),
                (
                    "last reload error",
                    backend
                        .last_reload_error
                        .clone()
                        .unwrap_or_else(|| "none".to_string()),
                ),
            ]);
        }
        Some(_) => {}
        None if status.http.is_some() => {}
        None if status
            .kubernetes
            .as_ref()
            .is_some_and(|kube| kube.default_secret.is_some()) => {}
        None => rows.push(("backend", "none (no secrets file)".to_string())),
    }
    if let Some(http) = &status.http {
        rows.extend(http_rows(http));
    }
    if let Some(kube) = status.kubernetes.as_ref().filter(|kube| is_in_use(kube)) {
        rows.extend(kube_rows(kube));
    }
    if let Some(vault) = &status.vault {
        rows.extend(vault_rows(vault));
    }
    let mut text = String::new();
    for (name, value) in rows {
        let label = format!("{name}:");
        let _ = writeln!(text, "{label:<19}{value}");
    }
    text
}

fn http_rows(http: &HttpInfo) -> Vec<(&'static str, String)> {
    let requests = http.cache_hits + http.cache_misses;
    let ratio = if requests == 0 {
        "no requests yet".to_string()
    } else {
        format!(
            "{:.1}% hits ({} hits, {} API requests)",
            http.cache_hits as f64 * 100.0 / requests as f64,
            http.cache_hits,
            http.cache_misses
        )
    };
    vec![
        ("backend", format!("http {}", http.url)),
        ("http auth", http.auth.clone()),
        ("http cache", count(http.cache_entries, "entry", "entries")),
        ("http hit ratio", ratio),
        (
            "http stale",
            format!("{} served while the API was unavailable", http.stale_served),
        ),
        (
            "http last error",
            http.last_error
                .clone()
                .unwrap_or_else(|| "none".to_string()),
        ),
    ]
}

/// Returns whether the Kubernetes Secret backend is configured or has been used, so that an
/// agent that never saw a `k8s:` reference does not list it.
fn is_in_use(kube: &KubeInfo) -> bool {
    kube.default_secret.is_some()
        || kube.server.is_some()
        || kube.cache_misses > 0
        || kube.last_error.is_some()
}

fn kube_rows(kube: &KubeInfo) -> Vec<(&'static str, String)> {
    let requests = kube.cache_hits + kube.cache_misses;
    let ratio = if requests == 0 {
        "no requests yet".to_string()
    } else {
        format!(
            "{:.1}% hits ({} hits, {} Secret reads)",
            kube.cache_hits as f64 * 100.0 / requests as f64,
            kube.cache_hits,
            kube.cache_misses
        )
    };
    let server = kube
        .server
        .clone()
        .unwrap_or_else(|| "not connected".to_string());
    let mut rows = Vec::new();
    if let Some(secret) = &kube.default_secret {
        let watch = if kube.watch_synced {
            "watched"
        } else {
            "watch not synced yet"
        };
        rows.push(("backend", format!("kubernetes secret {secret} ({watch})")));
    }
    rows.extend([
        ("kubernetes", format!("{server} as {}", kube.credentials)),
        ("k8s cache", count(kube.cache_entries, "Secret", "Secrets")),
        ("k8s hit ratio", ratio),
        (
            "k8s stale",
            format!(
                "{} served while the API server was unavailable",
                kube.stale_served
            ),
        ),
        (
            "k8s last error",
            kube.last_error
                .clone()
                .unwrap_or_else(|| "none".to_string()),
        ),
    ]);
    rows
}

fn vault_rows(vault: &VaultInfo) -> Vec<(&'static str, String)> {
    let address = match &vault.namespace {
        Some(namespace) => format!("{} (namespace {namespace})", vault.address),
        None => vault.address.clone(),
    };
    let token = match (vault.logged_in, vault.token_ttl_secs) {
        (false, _) => "not logged in".to_string(),
        (true, None) => "never expires".to_string(),
        (true, Some(ttl)) => format!(
            "expires in {}{}",
            format_duration(ttl),
            if vault.token_renewable {
                ", renewable"
            } else {
                ", not renewable"
            }
        ),
    };
    let requests = vault.cache_hits + vault.cache_misses;
    let ratio = if requests == 0 {
        "no requests yet".to_string()
    } else {
        format!(
            "{:.1}% hits ({} hits, {} Vault reads)",
            vault.cache_hits as f64 * 100.0 / requests as f64,
            vault.cache_hits,
            vault.cache_misses
        )
    };
    vec![
        ("vault", address),
        ("vault auth", vault.auth_method.clone()),
        ("vault token", token),
        (
            "vault cache",
            count(vault.cache_entries, "entry", "entries"),
        ),
        ("vault hit ratio", ratio),
        (
            "vault stale",
            format!("{} served while Vault was unavailable", vault.stale_served),
        ),
        ("vault leases", vault.live_leases.to_string()),
        (
            "vault last error",
            vault
                .last_error
                .clone()
                .unwrap_or_else(|| "none".to_string()),
        ),
    ]
}

/// Formats seconds as `1h 2m 3s`, leaving out leading zero units.
pub(crate) fn format_duration(total_secs: u64) -> String {
    let hours = total_secs / 3600;
    let minutes = total_secs % 3600 / 60;
    let secs = total_secs % 60;
    if hours > 0 {
        format!("{hours}h {minutes}m {secs}s")
    } else if minutes > 0 {
        format!("{minutes}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Formats `number` with the singular or plural noun, such as "1 entry" or "2 entries".
fn count(number: u64, singular: &str, plural: &str) -> String {
    let noun = if number == 1 { singular } else { plural };
    format!("{number} {noun}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn cache_counts_agree_in_number() {
        assert_eq!(super::count(0, "entry", "entries"), "0 entries");
        assert_eq!(super::count(1, "entry", "entries"), "1 entry");
        assert_eq!(super::count(1, "Secret", "Secrets"), "1 Secret");
        assert_eq!(super::count(2, "Secret", "Secrets"), "2 Secrets");
    }

    use super::*;
    use envproxy_agent::status::BackendInfo;

    #[test]
    fn text_lists_every_field() {
        let status = AgentStatus {
            version: "0.1.0".into(),
            mode: "local".into(),
            pid: 42,
            uptime_secs: 3723,
            socket: "/run/user/1000/envproxy/agent.sock".into(),
            backend: Some(BackendInfo {
                kind: "file".into(),
                path: Some("/home/u/secrets.json".into()),
                url: None,
                namespace: None,
                secret: None,
                keys_loaded: 3,
                keys_listed: true,
                last_reload_error: Some("invalid JSON secrets file".into()),
                last_reload_unix: Some(1000),
            }),
            http: None,
            vault: None,
            kubernetes: None,
            keys: vec!["A".into()],
            keys_truncated: false,
        };
        let text = render(&status, 1090);
        let expected = "\
reachable:         yes
socket:            /run/user/1000/envproxy/agent.sock
mode:              local
version:           0.1.0
pid:               42
uptime:            1h 2m 3s
backend:           file /home/u/secrets.json
keys loaded:       3
last reload:       1m 30s ago
last reload error: invalid JSON secrets file
";
        assert_eq!(text, expected);
    }

    #[test]
    fn text_lists_vault_fields() {
        let status = AgentStatus {
            version: "0.1.0".into(),
            mode: "local".into(),
            pid: 42,
            uptime_secs: 5,
            socket: "/run/agent.sock".into(),
            backend: None,
            http: None,
            vault: Some(VaultInfo {
                address: "https://vault.internal:8200".into(),
                namespace: Some("team-a".into()),
                auth_method: "token".into(),
                logged_in: true,
                token_ttl_secs: Some(3600),
                token_renewable: true,
                cache_entries: 4,
                cache_hits: 30,
                cache_misses: 10,
                stale_served: 2,
                live_leases: 1,
                last_error: Some("Vault at https://vault.internal:8200 is sealed".into()),
            }),
            kubernetes: None,
            keys: Vec::new(),
            keys_truncated: false,
        };
        let expected = "\
reachable:         yes
socket:            /run/agent.sock
mode:              local
version:           0.1.0
pid:               42
uptime:            5s
backend:           none (no secrets file)
vault:             https://vault.internal:8200 (namespace team-a)
vault auth:        token
vault token:       expires in 1h 0m 0s, renewable
vault cache:       4 entries
vault hit ratio:   75.0% hits (30 hits, 10 Vault reads)
vault stale:       2 served while Vault was unavailable
vault leases:      1
vault last error:  Vault at https://vault.internal:8200 is sealed
";
        assert_eq!(render(&status, 0), expected);
    }

    #[test]
    fn text_lists_http_fields() {
        let status = AgentStatus {
            version: "0.1.0".into(),
            mode: "local".into(),
            pid: 42,
            uptime_secs: 5,
            socket: "/run/agent.sock".into(),
            backend: Some(BackendInfo {
                kind: "http".into(),
                path: None,
                url: Some("https://secrets.internal".into()),
                namespace: None,
                secret: None,
                keys_loaded: 0,
                keys_listed: false,
                last_reload_error: None,
                last_reload_unix: None,
            }),
            http: Some(HttpInfo {
                url: "https://secrets.internal".into(),
                auth: "auth_token_file /run/token".into(),
                cache_entries: 2,
                cache_hits: 3,
                cache_misses: 1,
                stale_served: 0,
                last_error: None,
            }),
            vault: None,
            kubernetes: None,
            keys: Vec::new(),
            keys_truncated: false,
        };
        let expected = "\
reachable:         yes
socket:            /run/agent.sock
mode:              local
version:           0.1.0
pid:               42
uptime:            5s
backend:           http https://secrets.internal
http auth:         auth_token_file /run/token
http cache:        2 entries
http hit ratio:    75.0% hits (3 hits, 1 API requests)
http stale:        0 served while the API was unavailable
http last error:   none
";
        assert_eq!(render(&status, 0), expected);
    }

    #[test]
    fn text_lists_kubernetes_fields() {
        let status = AgentStatus {
            version: "0.1.0".into(),
            mode: "local".into(),
            pid: 42,
            uptime_secs: 5,
            socket: "/run/agent.sock".into(),
            backend: Some(BackendInfo {
                kind: "kubernetes".into(),
                path: None,
                url: None,
                namespace: Some("shop".into()),
                secret: Some("app-env".into()),
                keys_loaded: 2,
                keys_listed: true,
                last_reload_error: None,
                last_reload_unix: None,
            }),
            http: None,
            vault: None,
            kubernetes: Some(KubeInfo {
                server: Some("https://10.0.0.1:6443".into()),
                credentials: "kubeconfig".into(),
                default_secret: Some("shop/app-env".into()),
                watch_synced: true,
                cache_entries: 2,
                cache_hits: 9,
                cache_misses: 1,
                stale_served: 0,
                last_error: None,
            }),
            keys: Vec::new(),
            keys_truncated: false,
        };
        let expected = "\
reachable:         yes
socket:            /run/agent.sock
mode:              local
version:           0.1.0
pid:               42
uptime:            5s
backend:           kubernetes secret shop/app-env (watched)
kubernetes:        https://10.0.0.1:6443 as kubeconfig
k8s cache:         2 Secrets
k8s hit ratio:     90.0% hits (9 hits, 1 Secret reads)
k8s stale:         0 served while the API server was unavailable
k8s last error:    none
";
        assert_eq!(render(&status, 0), expected);
    }

    #[test]
    fn unused_kubernetes_backend_not_listed() {
        let status = AgentStatus {
            version: "0.1.0".into(),
            mode: "local".into(),
            pid: 42,
            uptime_secs: 5,
            socket: "/run/agent.sock".into(),
            backend: None,
            http: None,
            vault: None,
            kubernetes: Some(KubeInfo {
                server: None,
                credentials: "kubeconfig".into(),
                default_secret: None,
                watch_synced: false,
                cache_entries: 0,
                cache_hits: 0,
                cache_misses: 0,
                stale_served: 0,
                last_error: None,
            }),
            keys: Vec::new(),
            keys_truncated: false,
        };
        let text = render(&status, 0);
        assert!(!text.contains("kubernetes"), "{text}");
        assert!(
            text.contains("backend:           none (no secrets file)"),
            "{text}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(59), "59s");
        assert_eq!(format_duration(60), "1m 0s");
        assert_eq!(format_duration(7200), "2h 0m 0s");
    }
}
