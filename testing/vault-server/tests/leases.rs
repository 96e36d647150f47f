//! Database credentials with leases: renew, revoke, expiry and revocation with the token.

mod common;

use std::time::Duration;

use common::{start_frozen, Api};
use envproxy_vault_test_server::{
    Capability, DatabaseRole, Policy, RevocationReason, ServerOptions, TokenSpec, VaultTestServer,
};
use serde_json::json;

async fn server_with_role(role: DatabaseRole) -> VaultTestServer {
    let server = start_frozen().await;
    server
        .root()
        .add_database_role("database", "readonly", role)
        .unwrap();
    server
}

fn short_role() -> DatabaseRole {
    DatabaseRole::new(Duration::from_secs(60), Duration::from_secs(300))
}

#[tokio::test]
async fn creds_have_lease_and_fresh_credentials() {
    let server = server_with_role(short_role()).await;
    let api = Api::new(&server);

    let first = api
        .get("database/creds/readonly", server.root_token())
        .await;
    assert_eq!(first.status, 200);
    let lease_id = first.body["lease_id"].as_str().unwrap();
    assert!(
        lease_id.starts_with("database/creds/readonly/"),
        "{lease_id}"
    );
    assert_eq!(first.body["lease_duration"], 60);
    assert_eq!(first.body["renewable"], true);
    let data = &first.body["data"];
    assert!(data["username"]
        .as_str()
        .unwrap()
        .starts_with("v-root-readonly-"));
    assert_eq!(data["password"].as_str().unwrap().len(), 20);

    let second = api
        .get("database/creds/readonly", server.root_token())
        .await;
    assert_ne!(second.body["lease_id"], first.body["lease_id"]);
    assert_ne!(
        second.body["data"]["username"],
        first.body["data"]["username"]
    );
    assert_ne!(
        second.body["data"]["password"],
        first.body["data"]["password"]
    );
    assert_eq!(server.live_leases().len(), 2);
}

#[tokio::test]
async fn unknown_role_is_400() {
    let server = server_with_role(short_role()).await;
    let api = Api::new(&server);
    let reply = api.get("database/creds/missing", server.root_token()).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.errors(), ["unknown role: missing"]);
}

#[tokio::test]
async fn renew_extends_and_caps_at_max_ttl() {
    let server = server_with_role(short_role()).await;
    let api = Api::new(&server);
    let creds = api
        .get("database/creds/readonly", server.root_token())
        .await;
    let lease_id = creds.body["lease_id"].as_str().unwrap().to_owned();

    server.advance_clock(Duration::from_secs(50));
    let renewed = api
        .put(
            "sys/leases/renew",
            server.root_token(),
            json!({ "lease_id": lease_id, "increment": 120 }),
        )
        .await;
    assert_eq!(renewed.status, 200);
    assert_eq!(renewed.body["lease_id"], lease_id.as_str());
    assert_eq!(renewed.body["lease_duration"], 120);
    assert_eq!(renewed.body["renewable"], true);
    assert_eq!(renewed.body["data"], json!(null));

    server.advance_clock(Duration::from_secs(110));
    let capped = api
        .put(
            "sys/leases/renew",
            server.root_token(),
            json!({ "lease_id": lease_id, "increment": 3600 }),
        )
        .await;
    assert_eq!(capped.status, 200);
    assert_eq!(capped.body["lease_duration"], 140);
    assert!(capped.body["warnings"][0]
        .as_str()
        .unwrap()
        .contains("max_ttl"));
}

#[tokio::test]
async fn renew_takes_lease_id_from_url() {
    let server = server_with_role(short_role()).await;
    let api = Api::new(&server);
    let creds = api
        .get("database/creds/readonly", server.root_token())
        .await;
    let lease_id = creds.body["lease_id"].as_str().unwrap();
    let reply = api
        .put(
            &format!("sys/leases/renew/{lease_id}"),
            server.root_token(),
            json!({}),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["lease_duration"], 60);

    let missing = api
        .put("sys/leases/renew", server.root_token(), json!({}))
        .await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.errors(), ["lease_id must be specified"]);
}

#[tokio::test]
async fn revoked_lease_cannot_renew() {
    let server = server_with_role(short_role()).await;
    let api = Api::new(&server);
    let creds = api
        .get("database/creds/readonly", server.root_token())
        .await;
    let lease_id = creds.body["lease_id"].as_str().unwrap().to_owned();

    let revoke = api
        .put(
            "sys/leases/revoke",
            server.root_token(),
            json!({ "lease_id": lease_id }),
        )
        .await;
    assert_eq!(revoke.status, 204);
    assert!(server.live_leases().is_empty());
    let revoked = server.revoked_leases();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].lease_id, lease_id);
    assert_eq!(revoked[0].reason, RevocationReason::Revoked);

    let renew = api
        .put(
            "sys/leases/renew",
            server.root_token(),
            json!({ "lease_id": lease_id }),
        )
        .await;
    assert_eq!(renew.status, 400);
    assert_eq!(renew.errors(), ["lease not found"]);
}

#[tokio::test]
async fn revoke_without_sync_is_accepted() {
    let server = server_with_role(short_role()).await;
    let api = Api::new(&server);
    let creds = api
        .get("database/creds/readonly", server.root_token())
        .await;
    let body = json!({ "lease_id": creds.body["lease_id"], "sync": false });
    let reply = api
        .put("sys/leases/revoke", server.root_token(), body)
        .await;
    assert_eq!(reply.status, 202);
    assert!(server.live_leases().is_empty());
}

#[tokio::test]
async fn expired_lease_is_revoked() {
    let server = server_with_role(short_role()).await;
    let api = Api::new(&server);
    let creds = api
        .get("database/creds/readonly", server.root_token())
        .await;
    let lease_id = creds.body["lease_id"].as_str().unwrap().to_owned();

    server.advance_clock(Duration::from_secs(61));
    assert!(server.live_leases().is_empty());
    assert_eq!(server.revoked_leases()[0].reason, RevocationReason::Expired);
    let renew = api
        .put(
            "sys/leases/renew",
            server.root_token(),
            json!({ "lease_id": lease_id }),
        )
        .await;
    assert_eq!(renew.status, 400);
    assert_eq!(renew.errors(), ["lease not found"]);
}

#[tokio::test]
async fn non_renewable_role_rejects_renewal() {
    let server = server_with_role(short_role().renewable(false)).await;
    let api = Api::new(&server);
    let creds = api
        .get("database/creds/readonly", server.root_token())
        .await;
    assert_eq!(creds.body["renewable"], false);
    let renew = api
        .put(
            "sys/leases/renew",
            server.root_token(),
            json!({ "lease_id": creds.body["lease_id"] }),
        )
        .await;
    assert_eq!(renew.status, 400);
    assert_eq!(renew.errors(), ["lease is not renewable"]);
}

#[tokio::test]
async fn token_expiry_revokes_its_leases() {
    let server = server_with_role(short_role()).await;
    server.root().set_policy(
        "db",
        Policy::new().allow("database/creds/readonly", &[Capability::Read]),
    );
    let issued = server
        .create_token(TokenSpec::new(&["db"]).ttl(Duration::from_secs(30)))
        .unwrap();
    let api = Api::new(&server);
    let creds = api.get("database/creds/readonly", &issued.token).await;
    assert_eq!(creds.status, 200);
    assert!(creds.body["data"]["username"]
        .as_str()
        .unwrap()
        .starts_with("v-token-"));

    server.advance_clock(Duration::from_secs(31));
    let revoked = server.revoked_leases();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].reason, RevocationReason::TokenRevoked);
}

#[tokio::test]
async fn lease_lookup_reports_ttl() {
    let server = server_with_role(short_role()).await;
    let api = Api::new(&server);
    let creds = api
        .get("database/creds/readonly", server.root_token())
        .await;
    server.advance_clock(Duration::from_secs(10));
    let reply = api
        .put(
            "sys/leases/lookup",
            server.root_token(),
            json!({ "lease_id": creds.body["lease_id"] }),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["data"]["ttl"], 50);
    assert_eq!(reply.body["data"]["id"], creds.body["lease_id"]);
    let unknown = api
        .put(
            "sys/leases/lookup",
            server.root_token(),
            json!({ "lease_id": "x/y" }),
        )
        .await;
    assert_eq!(unknown.errors(), ["invalid lease"]);
}

#[tokio::test]
async fn leases_stay_in_their_namespace() {
    let options = ServerOptions::default()
        .with_namespace("team-a")
        .with_frozen_clock();
    let server = VaultTestServer::start(options).await.unwrap();
    let team = server.namespace("team-a").unwrap();
    team.add_database_role("database", "readonly", short_role())
        .unwrap();
    let api = Api::new(&server);
    let token = server.root_token();

    let creds = api
        .call(
            "GET",
            "database/creds/readonly",
            Some(token),
            Some("team-a"),
            None,
        )
        .await;
    let lease_id = creds.body["lease_id"].as_str().unwrap().to_owned();
    assert_eq!(server.live_leases()[0].namespace, "team-a");
    let body = json!({ "lease_id": lease_id });
    let from_root = api.put("sys/leases/renew", token, body.clone()).await;
    assert_eq!(from_root.errors(), ["lease not found"]);
    let from_team = api.call(
        "PUT",
        "sys/leases/renew",
        Some(token),
        Some("team-a"),
        Some(body),
    );
    assert_eq!(from_team.await.status, 200);
}
