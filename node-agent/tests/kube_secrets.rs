//! The Kubernetes Secret backend in local mode, against the kube API test server: `k8s:`
//! references read with a kubeconfig, the watched default Secret for `envproxy:` references
//! and bare names, RBAC errors, rotation and stale values during an outage.

mod admin_support;
mod http_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use envproxy_admin_proto::v1 as pb;
use envproxy_agent::admin::AdminSettings;
use envproxy_agent::kube_secrets::KubeSettings;
use envproxy_agent::Config;
use envproxy_kube_test_server::{KubeTestServer, Rule, ServerOptions};
use envproxy_proto::{Request, Response};
use http_support::{error_text, found_text, random_secret, settings as http_settings, TestAgent};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;

const USER_TOKEN: &str = "alice-token";

/// The kube API test server, and a kubeconfig for user `alice`, who may get Secrets in
/// `default` and `shop`, and list and watch them in `shop`.
struct Cluster {
    server: KubeTestServer,
    _dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

async fn cluster() -> Cluster {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = KubeTestServer::start(ServerOptions::default())
        .await
        .expect("start the kube API test server");
    server.register_token(
        USER_TOKEN,
        "alice",
        vec![
            Rule::new(&["get"], &["secrets"]).in_namespaces(&["default", "shop"]),
            Rule::new(&["list", "watch"], &["secrets"]).in_namespaces(&["shop"]),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig(USER_TOKEN)).unwrap();
    Cluster {
        server,
        _dir: dir,
        kubeconfig,
    }
}

fn secret(namespace: &str, name: &str, string_data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        string_data: Some(
            string_data
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..Secret::default()
    }
}

fn settings(cluster: &Cluster) -> KubeSettings {
    KubeSettings {
        kubeconfig: Some(cluster.kubeconfig.clone()),
        ..KubeSettings::default()
    }
}

/// Starts an agent that serves `k8s:` references with `kube` beside an empty secrets file.
async fn agent_with_file(kube: KubeSettings) -> TestAgent {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.json");
    std::fs::write(&file, "{}").unwrap();
    let agent = TestAgent::start_with(Config {
        secrets_file: Some(file),
        kubernetes: Some(kube),
        ..Config::default()
    })
    .await;
    // The file is loaded at start, so its directory may go.
    drop(dir);
    agent
}

/// Polls `condition` every 20 ms for up to 5 s.
async fn eventually(mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn k8s_reference_reads_with_kubeconfig() {
    let cluster = cluster().await;
    let password = random_secret();
    let token = random_secret();
    cluster
        .server
        .apply_secret(secret(
            "default",
            "db",
            &[("password", &password), ("user", "app")],
        ))
        .unwrap();
    let mut api = secret("shop", "api", &[]);
    api.string_data = None;
    api.data = Some(BTreeMap::from([(
        "token".to_owned(),
        ByteString(token.as_bytes().to_vec()),
    )]));
    cluster.server.apply_secret(api).unwrap();
    let agent = agent_with_file(settings(&cluster)).await;

    let value = found_text(agent.get("DB_PASSWORD", "k8s:db#password").await);
    assert_eq!(value, password, "namespace from the kubeconfig context");
    assert_eq!(
        found_text(agent.get("DB_USER", "k8s:default/db#user").await),
        "app"
    );
    assert_eq!(
        found_text(agent.get("API", "k8s:shop/api#token").await),
        token
    );
    assert_eq!(
        cluster.server.request_count("get", "secrets"),
        2,
        "one read per Secret: {:?}",
        cluster.server.requests()
    );

    let missing_key = error_text(agent.get("X", "k8s:shop/api#nope").await);
    assert_eq!(missing_key, "X: Secret shop/api has no key `nope`");
    let missing_secret = error_text(agent.get("X", "k8s:shop/gone#k").await);
    assert_eq!(missing_secret, "X: Secret shop/gone not found");

    let status = agent.status().await;
    let kubernetes = status
        .kubernetes
        .expect("a kubernetes object in the status");
    assert_eq!(
        kubernetes.server.as_deref(),
        Some(cluster.server.url().as_str())
    );
    assert_eq!(kubernetes.credentials, "kubeconfig");
    assert_eq!(kubernetes.default_secret, None);
    assert_eq!(
        kubernetes.cache_entries, 3,
        "db, api and the not-found gone"
    );
    assert_eq!(kubernetes.cache_hits, 2);
    assert_eq!(kubernetes.cache_misses, 3);
    agent.stop().await;
}

#[tokio::test]
async fn forbidden_read_names_identity_and_fix() {
    let cluster = cluster().await;
    cluster
        .server
        .apply_secret(secret("billing", "card", &[("number", &random_secret())]))
        .unwrap();
    let agent = agent_with_file(settings(&cluster)).await;

    let error = error_text(agent.get("CARD", "k8s:billing/card#number").await);
    assert!(
        error.starts_with(
            "CARD: permission denied reading Secret billing/card as kubeconfig user \
             `envproxy-test` (context `envproxy-test`)"
        ),
        "{error}"
    );
    assert!(
        error.contains("User \"alice\" cannot get resource \"secrets\""),
        "{error}"
    );
    assert!(error.contains("RoleBinding"), "{error}");
    let status = agent.status().await.kubernetes.unwrap();
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("billing/card")),
        "{:?}",
        status.last_error
    );
    agent.stop().await;
}

#[tokio::test]
async fn edited_secret_seen_after_ttl() {
    let cluster = cluster().await;
    cluster
        .server
        .apply_secret(secret("shop", "db", &[("password", "before")]))
        .unwrap();
    let mut kube = settings(&cluster);
    kube.cache_ttl = Duration::from_secs(1);
    let agent = agent_with_file(kube).await;
    assert_eq!(
        found_text(agent.get("P", "k8s:shop/db#password").await),
        "before"
    );

    let after = random_secret();
    cluster
        .server
        .apply_secret(secret("shop", "db", &[("password", &after)]))
        .unwrap();
    let edited = Instant::now();
    let seen =
        eventually(async || found_text(agent.get("P", "k8s:shop/db#password").await) == after)
            .await;
    assert!(seen, "the edited value was not served");
    assert!(
        edited.elapsed() < Duration::from_secs(3),
        "served after {:?}, expected within the 1 s TTL",
        edited.elapsed()
    );
    agent.stop().await;
}

#[tokio::test]
async fn outage_serves_stale_then_reports() {
    let cluster = cluster().await;
    let password = random_secret();
    cluster
        .server
        .apply_secret(secret("shop", "db", &[("password", &password)]))
        .unwrap();
    let mut kube = settings(&cluster);
    kube.cache_ttl = Duration::from_millis(200);
    kube.max_stale = Duration::from_secs(60);
    let agent = agent_with_file(kube).await;
    assert_eq!(
        found_text(agent.get("P", "k8s:shop/db#password").await),
        password
    );

    cluster.server.set_unavailable(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        found_text(agent.get("P", "k8s:shop/db#password").await),
        password,
        "the last good value during the outage"
    );
    let error = error_text(agent.get("Q", "k8s:shop/other#k").await);
    assert!(error.contains("is unavailable"), "{error}");
    assert!(error.contains("503"), "{error}");
    let status = agent.status().await.kubernetes.unwrap();
    assert!(status.stale_served >= 1, "{status:?}");
    cluster.server.set_unavailable(false);
    agent.stop().await;
}

#[tokio::test]
async fn default_secret_is_watched() {
    let cluster = cluster().await;
    let api_key = random_secret();
    cluster
        .server
        .apply_secret(secret("shop", "app-env", &[("API_KEY", &api_key)]))
        .unwrap();
    let kube = KubeSettings {
        namespace: Some("shop".to_string()),
        secret_name: Some("app-env".to_string()),
        // Long enough that only the watch can bring the edit within the test.
        cache_ttl: Duration::from_secs(300),
        ..settings(&cluster)
    };
    let agent = TestAgent::start_with(Config {
        kubernetes: Some(kube),
        ..Config::default()
    })
    .await;
    let synced = eventually(async || agent.status().await.kubernetes.unwrap().watch_synced).await;
    assert!(synced, "the watch of the default Secret did not sync");

    assert_eq!(found_text(agent.get_key("API_KEY").await), api_key);
    let bare = agent
        .request(&Request::V1 {
            key: b"API_KEY".to_vec(),
        })
        .await;
    assert_eq!(found_text(bare), api_key);
    assert_eq!(agent.get_key("NOT_SET").await, Response::NotFound);
    assert_eq!(
        cluster.server.request_count("get", "secrets"),
        0,
        "the watch fills the cache: {:?}",
        cluster.server.requests()
    );

    let rotated = random_secret();
    cluster
        .server
        .apply_secret(secret("shop", "app-env", &[("API_KEY", &rotated)]))
        .unwrap();
    let seen = eventually(async || found_text(agent.get_key("API_KEY").await) == rotated).await;
    assert!(seen, "the watched edit was not served");

    let status = agent.status().await.kubernetes.unwrap();
    assert_eq!(status.default_secret.as_deref(), Some("shop/app-env"));
    assert!(status.watch_synced);

    cluster.server.delete_secret("shop", "app-env").unwrap();
    let deleted = eventually(async || {
        matches!(agent.get_key("API_KEY").await, Response::Error(reason)
            if reason.contains("Secret shop/app-env not found"))
    })
    .await;
    assert!(deleted, "the deletion was not seen");
    agent.stop().await;
}

#[tokio::test]
async fn kubeconfig_created_later_is_used() {
    let cluster = cluster().await;
    let password = random_secret();
    cluster
        .server
        .apply_secret(secret("default", "db", &[("password", &password)]))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("later-kubeconfig");
    let kube = KubeSettings {
        kubeconfig: Some(kubeconfig.clone()),
        ..KubeSettings::default()
    };
    let agent = agent_with_file(kube).await;
    let error = error_text(agent.get("P", "k8s:db#password").await);
    assert!(
        error.starts_with("P: cannot set up the Kubernetes client"),
        "{error}"
    );
    assert!(error.contains("later-kubeconfig"), "{error}");
    let status = agent.status().await.kubernetes.unwrap();
    assert_eq!(status.server, None);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("later-kubeconfig")),
        "{:?}",
        status.last_error
    );

    std::fs::copy(&cluster.kubeconfig, &kubeconfig).unwrap();
    assert_eq!(
        found_text(agent.get("P", "k8s:db#password").await),
        password
    );
    let status = agent.status().await.kubernetes.unwrap();
    assert_eq!(
        status.server.as_deref(),
        Some(cluster.server.url().as_str())
    );
    assert_eq!(status.last_error, None);
    agent.stop().await;
}

#[tokio::test]
async fn admin_status_shows_both_caches() {
    let cluster = cluster().await;
    cluster
        .server
        .apply_secret(secret("shop", "db", &[("password", &random_secret())]))
        .unwrap();
    let token = random_secret();
    let api = http_support::start_server(&token).await;
    api.set_secret("API_KEY", &random_secret());
    let admin_dir = tempfile::tempdir().unwrap();
    let admin_socket = admin_dir.path().join("admin.sock");
    let agent = TestAgent::start_with(Config {
        http: Some(http_settings(&api, &token)),
        kubernetes: Some(settings(&cluster)),
        admin: AdminSettings {
            enabled: Some(true),
            socket: Some(admin_socket.clone()),
            health_listen: None,
        },
        ..Config::default()
    })
    .await;
    found_text(agent.get_key("API_KEY").await);
    found_text(agent.get_key("API_KEY").await);
    found_text(agent.get("P", "k8s:shop/db#password").await);

    let mut client = admin_support::admin_client(&admin_socket).await;
    let status = client
        .status(envproxy_admin_proto::v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let http = status.http.expect("the HTTP backend in the admin status");
    assert_eq!(http.address, api.url());
    assert_eq!(http.credentials, "auth_token");
    assert_eq!(http.cache_entries, 1);
    assert_eq!(http.cache_hits, 1);
    assert_eq!(http.cache_misses, 1);
    let kubernetes = status
        .kubernetes
        .expect("Kubernetes Secrets in the admin status");
    assert_eq!(kubernetes.address, cluster.server.url());
    assert_eq!(kubernetes.credentials, "kubeconfig");
    assert_eq!(kubernetes.default_secret, "");
    assert_eq!(kubernetes.cache_entries, 1);
    assert_eq!(kubernetes.cache_misses, 1);
    assert_eq!(kubernetes.last_error, "");
    agent.stop().await;
}

#[tokio::test]
async fn admin_flush_drops_http_and_secret_reads() {
    let cluster = cluster().await;
    let db_password = random_secret();
    let api_key = random_secret();
    cluster
        .server
        .apply_secret(secret("shop", "db", &[("password", &db_password)]))
        .unwrap();
    cluster
        .server
        .apply_secret(secret(
            "default",
            "cache",
            &[("password", &random_secret())],
        ))
        .unwrap();
    let token = random_secret();
    let api = http_support::start_server(&token).await;
    api.set_secret("API_KEY", &api_key);
    let admin_dir = tempfile::tempdir().unwrap();
    let admin_socket = admin_dir.path().join("admin.sock");
    let agent = TestAgent::start_with(Config {
        http: Some(http_settings(&api, &token)),
        kubernetes: Some(settings(&cluster)),
        admin: AdminSettings {
            enabled: Some(true),
            socket: Some(admin_socket.clone()),
            health_listen: None,
        },
        ..Config::default()
    })
    .await;
    let secret_reads = || cluster.server.request_count("get", "secrets");
    let read_all = async || {
        assert_eq!(found_text(agent.get_key("API_KEY").await), api_key);
        assert_eq!(
            found_text(agent.get("P", "k8s:shop/db#password").await),
            db_password
        );
        found_text(agent.get("C", "k8s:default/cache#password").await);
    };
    read_all().await;
    read_all().await;
    assert_eq!(api.request_count("API_KEY"), 1);
    assert_eq!(secret_reads(), 2, "one read per Secret, then the cache");

    let mut client = admin_support::admin_client(&admin_socket).await;
    let mut flush = async |target: pb::flush_request::Target| {
        client
            .flush(pb::FlushRequest {
                target: Some(target),
            })
            .await
            .unwrap()
            .into_inner()
    };
    use pb::flush_request::Target;

    let by_path = flush(Target::PathPrefix("k8s:shop/".into())).await;
    let paths: Vec<&str> = by_path.flushed.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["k8s:shop/db"]);
    assert_eq!(by_path.flushed[0].identity, "Kubernetes API as kubeconfig");
    read_all().await;
    assert_eq!(secret_reads(), 3, "only the flushed Secret is read again");
    assert_eq!(api.request_count("API_KEY"), 1);

    let by_key = flush(Target::PathPrefix("envproxy:API".into())).await;
    let paths: Vec<&str> = by_key.flushed.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["envproxy:API_KEY"]);
    let http_identity = by_key.flushed[0].identity.clone();
    assert_eq!(http_identity, format!("HTTP API at {}", api.url()));
    read_all().await;
    assert_eq!(
        api.request_count("API_KEY"),
        2,
        "the flushed key is read again"
    );
    assert_eq!(secret_reads(), 3);

    let vault_only = flush(Target::PathPrefix("secret/".into())).await;
    assert_eq!(vault_only.entries_flushed, 0);

    let by_identity = flush(Target::Identity("Kubernetes API as kubeconfig".into())).await;
    assert_eq!(by_identity.entries_flushed, 2, "{by_identity:?}");
    let by_identity = flush(Target::Identity(http_identity)).await;
    assert_eq!(by_identity.entries_flushed, 1, "{by_identity:?}");
    read_all().await;
    assert_eq!(secret_reads(), 5);
    assert_eq!(api.request_count("API_KEY"), 3);

    let all = flush(Target::PathPrefix(String::new())).await;
    assert_eq!(all.entries_flushed, 3, "{all:?}");
    let listed = format!("{all:?}");
    assert!(!listed.contains(&api_key), "{listed}");
    assert!(!listed.contains(&db_password), "{listed}");
    read_all().await;
    assert_eq!(secret_reads(), 7);
    assert_eq!(api.request_count("API_KEY"), 4);

    let unknown = client
        .flush(pb::FlushRequest {
            target: Some(Target::Identity("nobody".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(
        unknown.message().contains("Kubernetes API as kubeconfig"),
        "{unknown:?}"
    );
    assert!(unknown.message().contains("HTTP API at"), "{unknown:?}");
    drop(client);
    agent.stop().await;
}

#[tokio::test]
async fn admin_lists_http_and_secret_reads() {
    let cluster = cluster().await;
    let db_password = random_secret();
    let api_key = random_secret();
    cluster
        .server
        .apply_secret(secret("shop", "db", &[("password", &db_password)]))
        .unwrap();
    let token = random_secret();
    let api = http_support::start_server(&token).await;
    api.set_secret("API_KEY", &api_key);
    let admin_dir = tempfile::tempdir().unwrap();
    let admin_socket = admin_dir.path().join("admin.sock");
    let http = http_settings(&api, &token);
    let http_ttl = http.cache_ttl;
    let kube = settings(&cluster);
    let kube_ttl = kube.cache_ttl;
    let agent = TestAgent::start_with(Config {
        http: Some(http),
        kubernetes: Some(kube),
        admin: AdminSettings {
            enabled: Some(true),
            socket: Some(admin_socket.clone()),
            health_listen: None,
        },
        ..Config::default()
    })
    .await;
    for _ in 0..2 {
        assert_eq!(found_text(agent.get_key("API_KEY").await), api_key);
    }
    assert_eq!(agent.get_key("NOT_SET").await, Response::NotFound);
    for _ in 0..3 {
        let password = found_text(agent.get("P", "k8s:shop/db#password").await);
        assert_eq!(password, db_password);
    }
    let missing_secret = error_text(agent.get("G", "k8s:shop/gone#password").await);
    assert!(
        missing_secret.contains("Secret shop/gone not found"),
        "{missing_secret}"
    );

    let mut client = admin_support::admin_client(&admin_socket).await;
    let listed = client
        .list_cache_entries(pb::ListCacheEntriesRequest {})
        .await
        .unwrap()
        .into_inner();
    let http_identity = format!("HTTP API at {}", api.url());
    let kube_identity = "Kubernetes API as kubeconfig";
    let rows: Vec<(&str, &str, u64, bool)> = listed
        .entries
        .iter()
        .map(|e| (e.identity.as_str(), e.path.as_str(), e.hits, e.not_found))
        .collect();
    assert_eq!(
        rows,
        [
            (http_identity.as_str(), "envproxy:API_KEY", 1, false),
            (http_identity.as_str(), "envproxy:NOT_SET", 0, true),
            (kube_identity, "k8s:shop/db", 2, false),
            (kube_identity, "k8s:shop/gone", 0, true),
        ],
        "{listed:?}"
    );
    for entry in &listed.entries {
        let (backend, cache_ttl) = if entry.path.starts_with("k8s:") {
            (pb::CacheBackend::Kubernetes, kube_ttl)
        } else {
            (pb::CacheBackend::Http, http_ttl)
        };
        assert_eq!(entry.backend(), backend, "{entry:?}");
        assert_eq!(entry.version, None, "{entry:?}");
        assert_eq!(entry.lease_end_unix_ms, None, "{entry:?}");
        assert!(!entry.stale, "{entry:?}");
        assert!(entry.age_seconds < 30, "{entry:?}");
        let ttl_left = Duration::from_secs(entry.ttl_left_seconds);
        assert!(ttl_left <= cache_ttl, "{entry:?}");
        assert!(ttl_left + Duration::from_secs(30) > cache_ttl, "{entry:?}");
    }
    let text = format!("{listed:?}");
    assert!(
        !text.contains(&api_key),
        "the listing contains the HTTP value"
    );
    assert!(
        !text.contains(&db_password),
        "the listing contains the Secret value"
    );

    // Flush names entries as the listing does, so a listed path flushes that entry alone.
    let flushed = client
        .flush(pb::FlushRequest {
            target: Some(pb::flush_request::Target::PathPrefix("k8s:shop/db".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(flushed.flushed.len(), 1, "{flushed:?}");
    assert_eq!(flushed.flushed[0].identity, kube_identity);
    let listed = client
        .list_cache_entries(pb::ListCacheEntriesRequest {})
        .await
        .unwrap()
        .into_inner();
    let paths: Vec<&str> = listed.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["envproxy:API_KEY", "envproxy:NOT_SET", "k8s:shop/gone"]
    );
    drop(client);
    agent.stop().await;
}

#[tokio::test]
async fn refused_watch_backs_off_and_explains() {
    let logs = http_support::capture_logs();
    let cluster = cluster().await;
    let api_key = random_secret();
    let name = format!("app-env-{}", &random_secret()[..8].to_lowercase());
    cluster
        .server
        .apply_secret(secret("default", &name, &[("API_KEY", &api_key)]))
        .unwrap();
    // alice may get Secrets in `default` but not list or watch them.
    let kube = KubeSettings {
        namespace: Some("default".to_string()),
        secret_name: Some(name.clone()),
        ..settings(&cluster)
    };
    let agent = TestAgent::start_with(Config {
        kubernetes: Some(kube),
        ..Config::default()
    })
    .await;
    assert_eq!(
        found_text(agent.get_key("API_KEY").await),
        api_key,
        "values are read with `get` while the watch is refused"
    );
    tokio::time::sleep(Duration::from_millis(6500)).await;

    // Backoff of 1, 2 and 4 s: attempts at about 0, 1, 3 and 7 s.
    let lists = cluster.server.request_count("list", "secrets");
    assert!(lists >= 2, "the watch was not retried: {lists} lists");
    assert!(lists <= 4, "the watch was retried {lists} times in 6.5 s");
    let text = logs.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| line.contains(&name) && line.contains("envproxy_agent"))
        .collect();
    let warnings: Vec<&&str> = lines.iter().filter(|line| line.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{lines:#?}");
    assert!(
        warnings[0].contains("needs `list` and `watch` on secrets in namespace default"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[0].contains(&cluster.server.url()),
        "{}",
        warnings[0]
    );
    for line in &lines {
        assert!(!line.contains("Status {"), "{line}");
    }
    assert!(!text.contains(&api_key), "a value was logged");
    agent.stop().await;
}

#[tokio::test]
async fn rejected_credentials_not_serving() {
    let cluster = cluster().await;
    cluster
        .server
        .apply_secret(secret("shop", "db", &[("password", &random_secret())]))
        .unwrap();
    let admin_dir = tempfile::tempdir().unwrap();
    let admin_socket = admin_dir.path().join("admin.sock");
    let agent = TestAgent::start_with(Config {
        kubernetes: Some(settings(&cluster)),
        admin: AdminSettings {
            enabled: Some(true),
            socket: Some(admin_socket.clone()),
            health_listen: None,
        },
        ..Config::default()
    })
    .await;
    found_text(agent.get("P", "k8s:shop/db#password").await);
    let not_serving_reason = async || {
        admin_support::admin_client(&admin_socket)
            .await
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .not_serving_reason
    };
    assert!(eventually(async || not_serving_reason().await.is_empty()).await);

    // The API server no longer accepts the kubeconfig's token: every read gets a 401.
    assert!(cluster.server.revoke_token(USER_TOKEN));
    let error = error_text(agent.get("Q", "k8s:default/other#password").await);
    assert!(error.contains("401"), "{error}");
    let mut reason = String::new();
    let flipped = eventually(async || {
        reason = not_serving_reason().await;
        !reason.is_empty()
    })
    .await;
    assert!(flipped, "health stayed serving after a 401");
    assert!(
        reason.contains("Kubernetes Secrets backend is unusable"),
        "{reason}"
    );
    assert!(reason.contains("rejected the credentials"), "{reason}");
    assert!(!reason.contains(USER_TOKEN), "{reason}");
}
