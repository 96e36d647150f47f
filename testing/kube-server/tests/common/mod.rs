//! Helpers shared by the integration tests: pods, a plain HTTP client with a bearer token,
//! and a reader of watch streams.

#![allow(dead_code)]

use std::sync::Once;
use std::time::Duration;

use envproxy_kube_test_server::{KubeTestServer, ServerOptions};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

/// Installs ring as rustls's process-wide provider; reqwest is built without one.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub async fn start() -> KubeTestServer {
    start_with(ServerOptions::default()).await
}

pub async fn start_with(options: ServerOptions) -> KubeTestServer {
    install_crypto_provider();
    KubeTestServer::start(options).await.expect("server starts")
}

/// Builds a pod in `namespace` on `node` with service account `app`.
pub fn pod(namespace: &str, name: &str, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            service_account_name: Some("app".to_owned()),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    pub fn new(server: &KubeTestServer, token: Option<&str>) -> Api {
        install_crypto_provider();
        Api {
            client: reqwest::Client::builder()
                .tls_backend_rustls()
                .build()
                .unwrap(),
            base: server.url(),
            token: token.map(str::to_owned),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        let response = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        reply(response).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        let response = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap();
        reply(response).await
    }

    /// Opens a watch and returns its response, whose body is read with [`WatchReader`].
    pub async fn watch(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
    }
}

async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("body is JSON: {text}"))
    };
    Reply { status, body }
}

/// Splits a watch response body into its JSON events.
pub struct WatchReader {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl WatchReader {
    pub fn new(response: reqwest::Response) -> WatchReader {
        WatchReader {
            response,
            buffer: Vec::new(),
        }
    }

    /// Returns the next event, or `None` when the stream ends; panics after 5 s of silence.
    pub async fn next(&mut self) -> Option<Value> {
        self.next_within(Duration::from_secs(5))
            .await
            .expect("a watch event or the end of the stream within 5 s")
    }

    /// Returns the next event, `Ok(None)` at the end of the stream, `Err(())` on timeout.
    pub async fn next_within(&mut self, wait: Duration) -> Result<Option<Value>, ()> {
        loop {
            if let Some(at) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=at).collect();
                return Ok(Some(serde_json::from_slice(&line).unwrap()));
            }
            let chunk = tokio::time::timeout(wait, self.response.chunk())
                .await
                .map_err(|_| ())?
                .unwrap();
            match chunk {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
    }
}
