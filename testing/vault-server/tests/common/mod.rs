//! Helpers shared by the integration tests: a plain HTTP client that sends Vault requests
//! and decodes the JSON response.

#![allow(dead_code)]

use std::sync::Once;

use envproxy_vault_test_server::{ServerOptions, VaultTestServer};
use reqwest::Method;
use serde_json::Value;

/// Installs ring as rustls's process-wide provider; reqwest and vaultrs are built with
/// `rustls-no-provider` and need one.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A status code and the decoded body (`Value::Null` when the body is empty).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    /// Returns the `errors` array of an error body.
    pub fn errors(&self) -> Vec<String> {
        let errors = self.body["errors"]
            .as_array()
            .expect("body has an errors array");
        errors
            .iter()
            .map(|e| e.as_str().unwrap().to_owned())
            .collect()
    }
}

pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
}

impl Api {
    pub fn new(server: &VaultTestServer) -> Api {
        install_crypto_provider();
        let mut builder = reqwest::Client::builder().tls_backend_rustls();
        if let Some(pem) = server.ca_cert_pem() {
            let ca = reqwest::Certificate::from_pem(pem.as_bytes()).unwrap();
            builder = builder.tls_certs_only([ca]);
        }
        Api {
            client: builder.build().unwrap(),
            base: server.url(),
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        namespace: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method, format!("{}/v1/{path}", self.base));
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token);
        }
        if let Some(namespace) = namespace {
            request = request.header("X-Vault-Namespace", namespace);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request reaches the server");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        Reply {
            status,
            body,
            headers,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call("GET", path, Some(token), None, None).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call("PUT", path, Some(token), None, Some(body)).await
    }
}

pub async fn start_default() -> VaultTestServer {
    VaultTestServer::start(ServerOptions::default())
        .await
        .unwrap()
}

pub async fn start_frozen() -> VaultTestServer {
    VaultTestServer::start(ServerOptions::default().with_frozen_clock())
        .await
        .unwrap()
}

/// Returns the keys of a JSON object, sorted.
pub fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}
