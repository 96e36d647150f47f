//! Service account tokens: the TokenRequest API, projected tokens minted for tests, their
//! claims and signature, and a Kubernetes-auth login to the Vault test server with them.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{pod, start, Api};
use envproxy_kube_test_server::{KubeTestServer, Rule, DEFAULT_ISSUER};
use envproxy_vault_test_server::{KubernetesRole, VaultTestServer};
use serde_json::{json, Value};

const TOKEN_PATH: &str = "/api/v1/namespaces/prod/serviceaccounts/app/token";

fn token_request(pod_name: &str, pod_uid: &str, expiration: i64) -> Value {
    json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": ["vault"],
            "expirationSeconds": expiration,
            "boundObjectRef": { "kind": "Pod", "apiVersion": "v1", "name": pod_name, "uid": pod_uid },
        },
    })
}

/// Decodes the header and claims of a compact JWS.
fn decode(jwt: &str) -> (Value, Value) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts");
    let json = |part: &str| serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap();
    (json(parts[0]), json(parts[1]))
}

/// Checks the RS256 signature of `jwt` with the server's published key.
fn verify(server: &KubeTestServer, jwt: &str) -> bool {
    let jwks = server.jwks();
    let key = &jwks["keys"][0];
    let component = |name: &str| URL_SAFE_NO_PAD.decode(key[name].as_str().unwrap()).unwrap();
    let public = ring::signature::RsaPublicKeyComponents {
        n: component("n"),
        e: component("e"),
    };
    let (signing_input, signature) = jwt.rsplit_once('.').unwrap();
    let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    public
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            signing_input.as_bytes(),
            &signature,
        )
        .is_ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn token_request_returns_bound_token() {
    let server = start().await;
    let stored = server.apply_pod(pod("prod", "web-0", "node-a")).unwrap();
    let pod_uid = stored.metadata.uid.unwrap();
    let api = Api::new(&server, Some(server.admin_token()));

    let reply = api
        .post(TOKEN_PATH, &token_request("web-0", &pod_uid, 600))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["kind"], "TokenRequest");
    assert_eq!(reply.body["apiVersion"], "authentication.k8s.io/v1");
    assert!(reply.body["status"]["expirationTimestamp"].is_string());
    let token = reply.body["status"]["token"].as_str().unwrap();
    assert!(verify(&server, token), "signature verifies with the JWKS");

    let (header, claims) = decode(token);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], server.jwks()["keys"][0]["kid"]);
    assert_eq!(claims["iss"], DEFAULT_ISSUER);
    assert_eq!(claims["aud"], json!(["vault"]));
    assert_eq!(claims["sub"], "system:serviceaccount:prod:app");
    let issued = claims["iat"].as_u64().unwrap();
    assert!(issued.abs_diff(unix_now()) <= 2);
    assert_eq!(claims["nbf"].as_u64(), Some(issued));
    assert_eq!(claims["exp"].as_u64(), Some(issued + 600));
    let kubernetes = &claims["kubernetes.io"];
    assert_eq!(kubernetes["namespace"], "prod");
    assert_eq!(kubernetes["pod"]["name"], "web-0");
    assert_eq!(kubernetes["pod"]["uid"], pod_uid.as_str());
    assert_eq!(kubernetes["node"]["name"], "node-a");
    assert_eq!(
        kubernetes["node"]["uid"],
        server.node_uid("node-a").unwrap().as_str()
    );
    assert_eq!(kubernetes["serviceaccount"]["name"], "app");
    assert_eq!(
        kubernetes["serviceaccount"]["uid"].as_str().unwrap().len(),
        36
    );
}

#[tokio::test]
async fn token_request_rejections() {
    let server = start().await;
    let stored = server.apply_pod(pod("prod", "web-0", "node-a")).unwrap();
    let pod_uid = stored.metadata.uid.unwrap();
    let api = Api::new(&server, Some(server.admin_token()));

    let short = api
        .post(TOKEN_PATH, &token_request("web-0", &pod_uid, 599))
        .await;
    assert_eq!(short.status, 422);
    assert_eq!(short.body["reason"], "Invalid");

    let stale_uid = api
        .post(TOKEN_PATH, &token_request("web-0", "other-uid", 600))
        .await;
    assert_eq!(stale_uid.status, 409);

    let no_pod = api.post(TOKEN_PATH, &token_request("web-9", "", 600)).await;
    assert_eq!(no_pod.status, 404);
    assert_eq!(no_pod.body["message"], "pods \"web-9\" not found");

    let no_account = api
        .post(
            "/api/v1/namespaces/prod/serviceaccounts/ghost/token",
            &token_request("web-0", &pod_uid, 600),
        )
        .await;
    assert_eq!(no_account.status, 404);
    assert_eq!(
        no_account.body["message"],
        "serviceaccounts \"ghost\" not found"
    );

    server.add_service_account("prod", "other");
    let wrong_account = api
        .post(
            "/api/v1/namespaces/prod/serviceaccounts/other/token",
            &token_request("web-0", &pod_uid, 600),
        )
        .await;
    assert_eq!(wrong_account.status, 400);
}

#[tokio::test]
async fn token_request_needs_create_permission() {
    let server = start().await;
    let stored = server.apply_pod(pod("prod", "web-0", "node-a")).unwrap();
    let pod_uid = stored.metadata.uid.unwrap();
    server.register_token(
        "watch-only",
        "agent",
        vec![Rule::new(&["list", "watch"], &["pods"])],
    );
    server.register_token(
        "minter",
        "agent",
        vec![Rule::new(&["create"], &["serviceaccounts/token"]).in_namespaces(&["prod"])],
    );
    let body = token_request("web-0", &pod_uid, 600);

    let denied = Api::new(&server, Some("watch-only"))
        .post(TOKEN_PATH, &body)
        .await;
    assert_eq!(denied.status, 403);
    let allowed = Api::new(&server, Some("minter"))
        .post(TOKEN_PATH, &body)
        .await;
    assert_eq!(allowed.status, 201);
    assert_eq!(server.request_count("create", "serviceaccounts/token"), 2);
}

#[tokio::test]
async fn minted_projected_token_logs_in_to_vault() {
    let server = start().await;
    let stored = server.apply_pod(pod("prod", "web-0", "node-a")).unwrap();
    let token = server
        .mint_projected_token("prod", "web-0", "vault", Duration::from_secs(600))
        .unwrap();
    assert!(verify(&server, &token));
    let (_, claims) = decode(&token);
    assert_eq!(claims["aud"], json!(["vault"]));
    let pod_uid = stored.metadata.uid.unwrap();
    assert_eq!(claims["kubernetes.io"]["pod"]["uid"], pod_uid.as_str());

    let vault = VaultTestServer::start(Default::default()).await.unwrap();
    let mut role = KubernetesRole::new(&["app"], &["prod"], &["app-read"]);
    role.audience = Some("vault".to_owned());
    vault
        .root()
        .add_kubernetes_role("kubernetes", "app", role)
        .unwrap();
    let login = reqwest::Client::builder()
        .tls_backend_rustls()
        .build()
        .unwrap()
        .post(format!("{}/v1/auth/kubernetes/login", vault.url()))
        .json(&json!({ "role": "app", "jwt": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let body: Value = login.json().await.unwrap();
    assert_eq!(body["auth"]["metadata"]["service_account_name"], "app");
    assert_eq!(
        body["auth"]["metadata"]["service_account_namespace"],
        "prod"
    );
}

#[tokio::test]
async fn minted_token_for_missing_pod_fails() {
    let server = start().await;
    let error = server
        .mint_projected_token("prod", "ghost", "vault", Duration::from_secs(600))
        .unwrap_err();
    assert_eq!(error.code, 404);
}

#[tokio::test]
async fn discovery_documents_name_issuer_and_keys() {
    let server = start().await;
    let api = Api::new(&server, None);
    let configuration = api.get("/.well-known/openid-configuration").await;
    assert_eq!(configuration.status, 200);
    assert_eq!(configuration.body["issuer"], DEFAULT_ISSUER);
    let jwks = api.get("/openid/v1/jwks").await;
    assert_eq!(jwks.body, server.jwks());
    assert_eq!(jwks.body["keys"][0]["alg"], "RS256");
}
