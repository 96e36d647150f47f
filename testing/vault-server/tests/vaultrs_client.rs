//! The `vaultrs` crate, the client EnvProxy's backend uses, against the test server.
//!
//! vaultrs has no call for `sys/leases/renew`, and its database creds call drops the lease
//! id, so those go through a hand-written rustify endpoint executed by the vaultrs client:
//! the pattern the backend can use where vaultrs falls short.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use common::install_crypto_provider;
use envproxy_vault_test_server::{
    service_account_jwt, DatabaseRole, KubernetesRole, ServerOptions, TokenSpec, VaultTestServer,
};
use rustify::enums::{RequestMethod, RequestType, ResponseType};
use rustify::errors::ClientError as RestClientError;
use serde::Deserialize;
use serde_json::json;
use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

fn client(server: &VaultTestServer, token: &str) -> VaultClient {
    install_crypto_provider();
    let settings = VaultClientSettingsBuilder::default()
        .address(server.url())
        .token(token)
        .ca_certs(Vec::new())
        .build()
        .unwrap();
    VaultClient::new(settings).unwrap()
}

#[tokio::test]
async fn kv2_read_and_write() {
    let server = VaultTestServer::start(ServerOptions::default())
        .await
        .unwrap();
    server
        .root()
        .kv2_put(
            "secret",
            "myapp/config",
            json!({ "db_url": "postgres://a" }),
        )
        .unwrap();
    let vault = client(&server, server.root_token());

    let read: HashMap<String, String> = vaultrs::kv2::read(&vault, "secret", "myapp/config")
        .await
        .unwrap();
    assert_eq!(read["db_url"], "postgres://a");

    let written = vaultrs::kv2::set(&vault, "secret", "myapp/config", &json!({ "db_url": "b" }))
        .await
        .unwrap();
    assert_eq!(written.version, 2);
    let first: HashMap<String, String> =
        vaultrs::kv2::read_version(&vault, "secret", "myapp/config", 1)
            .await
            .unwrap();
    assert_eq!(first["db_url"], "postgres://a");
    let metadata = vaultrs::kv2::read_metadata(&vault, "secret", "myapp/config")
        .await
        .unwrap();
    assert_eq!(metadata.current_version, 2);

    let missing = vaultrs::kv2::read::<HashMap<String, String>>(&vault, "secret", "none").await;
    match missing {
        Err(ClientError::APIError { code, errors }) => {
            assert_eq!(code, 404);
            assert!(errors.is_empty());
        }
        other => panic!("expected a 404 API error, got {other:?}"),
    }
}

#[tokio::test]
async fn kv1_read_and_write() {
    let server = VaultTestServer::start(ServerOptions::default())
        .await
        .unwrap();
    let vault = client(&server, server.root_token());
    let data = HashMap::from([("password", "hunter2")]);
    vaultrs::kv1::set(&vault, "kv", "legacy", &data)
        .await
        .unwrap();

    let read: HashMap<String, String> = vaultrs::kv1::get(&vault, "kv", "legacy").await.unwrap();
    assert_eq!(read["password"], "hunter2");
    let raw = vaultrs::kv1::get_raw(&vault, "kv", "legacy").await.unwrap();
    assert_eq!(raw.lease_duration, 2_764_800);
}

#[tokio::test]
async fn token_lookup_self_over_tls() {
    let server = VaultTestServer::start(ServerOptions::default().with_tls())
        .await
        .unwrap();
    let issued = server
        .create_token(TokenSpec::new(&["app"]).ttl(Duration::from_secs(3600)))
        .unwrap();
    let mut ca_file = tempfile::NamedTempFile::new().unwrap();
    ca_file
        .write_all(server.ca_cert_pem().unwrap().as_bytes())
        .unwrap();
    install_crypto_provider();
    let settings = VaultClientSettingsBuilder::default()
        .address(server.url())
        .token(issued.token.as_str())
        .ca_certs(vec![ca_file.path().to_str().unwrap().to_owned()])
        .build()
        .unwrap();
    let vault = VaultClient::new(settings).unwrap();

    let info = vault.lookup().await.unwrap();
    assert_eq!(info.accessor, issued.accessor);
    assert_eq!(info.policies, ["app", "default"]);
    assert!(info.ttl > 3590, "ttl {}", info.ttl);
    assert!(info.ttl <= 3600, "ttl {}", info.ttl);
    assert_eq!(info.renewable, Some(true));
}

#[tokio::test]
async fn token_renew_self() {
    let server = VaultTestServer::start(ServerOptions::default().with_frozen_clock())
        .await
        .unwrap();
    let issued = server
        .create_token(TokenSpec::new(&["app"]).ttl(Duration::from_secs(600)))
        .unwrap();
    let vault = client(&server, &issued.token);
    server.advance_clock(Duration::from_secs(500));

    let renewed = vault.renew(Some("1h")).await.unwrap();
    assert_eq!(renewed.client_token, issued.token);
    assert_eq!(renewed.lease_duration, 3600);
    assert!(renewed.renewable);
    assert_eq!(server.request_count("POST", "auth/token/renew-self"), 1);

    let default_increment = vault.renew(None).await.unwrap();
    assert_eq!(default_increment.lease_duration, 600);

    server.advance_clock(Duration::from_secs(601));
    match vault.lookup().await {
        Err(ClientError::APIError { code, errors }) => {
            assert_eq!(code, 403);
            assert_eq!(
                errors,
                ["2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n"]
            );
        }
        other => panic!("expected the expired token to be denied, got {other:?}"),
    }
}

#[tokio::test]
async fn kubernetes_login() {
    let server = VaultTestServer::start(ServerOptions::default())
        .await
        .unwrap();
    let role = KubernetesRole::new(&["app"], &["prod"], &["app-read"]);
    server
        .root()
        .add_kubernetes_role("kubernetes", "app", role)
        .unwrap();
    let vault = client(&server, "");
    let jwt = service_account_jwt("prod", "app", server.now() + Duration::from_secs(600));

    let auth = vaultrs::auth::kubernetes::login(&vault, "kubernetes", "app", &jwt)
        .await
        .unwrap();
    assert!(auth.client_token.starts_with("hvs."));
    assert_eq!(auth.policies, ["app-read", "default"]);
    assert!(auth.renewable);
    assert_eq!(auth.token_type, "service");

    let denied = vaultrs::auth::kubernetes::login(&vault, "kubernetes", "db", &jwt).await;
    assert!(
        matches!(denied, Err(ClientError::APIError { code: 400, .. })),
        "{denied:?}"
    );
}

#[tokio::test]
async fn database_lease_renew() {
    let server = VaultTestServer::start(ServerOptions::default().with_frozen_clock())
        .await
        .unwrap();
    let role = DatabaseRole::new(Duration::from_secs(60), Duration::from_secs(600));
    server
        .root()
        .add_database_role("database", "readonly", role)
        .unwrap();
    let vault = client(&server, server.root_token());

    let creds = vaultrs::api::exec_with_no_result(&vault, ReadCreds { role: "readonly" })
        .await
        .unwrap();
    assert!(creds.lease_id.starts_with("database/creds/readonly/"));
    assert_eq!(creds.lease_duration, 60);
    assert!(!creds.data.username.is_empty());

    server.advance_clock(Duration::from_secs(30));
    let renewal = RenewLease {
        lease_id: creds.lease_id.clone(),
        increment: 120,
    };
    let renewed = vaultrs::api::exec_with_no_result(&vault, renewal)
        .await
        .unwrap();
    assert_eq!(renewed.lease_id, creds.lease_id);
    assert_eq!(renewed.lease_duration, 120);
    assert!(renewed.renewable);

    server.advance_clock(Duration::from_secs(121));
    let renewal = RenewLease {
        lease_id: creds.lease_id.clone(),
        increment: 120,
    };
    let expired = vaultrs::api::exec_with_no_result(&vault, renewal).await;
    match expired {
        Err(ClientError::APIError { code, errors }) => {
            assert_eq!(code, 400);
            assert_eq!(errors, ["lease not found"]);
        }
        other => panic!("expected lease not found, got {other:?}"),
    }
}

/// `GET <mount>/creds/<role>` keeping the lease fields vaultrs strips.
struct ReadCreds {
    role: &'static str,
}

#[derive(Debug, Deserialize)]
struct Credentials {
    username: String,
}

#[derive(Debug, Deserialize)]
struct CredsResponse {
    lease_id: String,
    lease_duration: u64,
    data: Credentials,
}

impl rustify::Endpoint for ReadCreds {
    type Response = CredsResponse;
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        format!("database/creds/{}", self.role)
    }

    fn method(&self) -> RequestMethod {
        RequestMethod::GET
    }
}

/// `PUT sys/leases/renew`.
struct RenewLease {
    lease_id: String,
    increment: u64,
}

#[derive(Debug, Deserialize)]
struct LeaseRenewal {
    lease_id: String,
    lease_duration: u64,
    renewable: bool,
}

impl rustify::Endpoint for RenewLease {
    type Response = LeaseRenewal;
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        "sys/leases/renew".to_owned()
    }

    fn method(&self) -> RequestMethod {
        RequestMethod::PUT
    }

    fn body(&self) -> Result<Option<Vec<u8>>, RestClientError> {
        let body = json!({ "lease_id": self.lease_id, "increment": self.increment });
        Ok(Some(body.to_string().into_bytes()))
    }
}
