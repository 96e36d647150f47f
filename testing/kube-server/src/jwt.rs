//! Service account tokens signed with RS256, with the claims of a projected (bound) token.
//!
//! The signing key is a fixed 2048-bit RSA test key kept beside this file, so tokens can be
//! checked against [`SigningKey::jwks`] across runs. It signs nothing but test tokens.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::rsa::PublicKeyComponents;
use ring::signature::RSA_PKCS1_SHA256;
use ring::signature::{RsaKeyPair, RsaPublicKeyComponents, RSA_PKCS1_2048_8192_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivatePkcs8KeyDer;
use serde_json::{json, Value};

/// PKCS#8 PEM of the test signing key.
const SIGNING_KEY_PEM: &str = include_str!("signing-key.pem");

/// The issuer of the API server's service account tokens in a default cluster.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The RSA key that signs service account tokens.
pub(crate) struct SigningKey {
    key_pair: RsaKeyPair,
    key_id: String,
    random: SystemRandom,
}

impl SigningKey {
    pub(crate) fn load() -> SigningKey {
        let der = PrivatePkcs8KeyDer::from_pem_slice(SIGNING_KEY_PEM.as_bytes())
            .expect("the embedded signing key is valid PKCS#8 PEM");
        let key_pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .expect("the embedded signing key is a valid RSA key");
        // The API server derives `kid` from the SHA-256 of the public key's DER; this hashes
        // the PKCS#1 RSAPublicKey rather than the SubjectPublicKeyInfo, which is as stable.
        let digest = ring::digest::digest(&ring::digest::SHA256, key_pair.public().as_ref());
        SigningKey {
            key_pair,
            key_id: URL_SAFE_NO_PAD.encode(digest.as_ref()),
            random: SystemRandom::new(),
        }
    }

    /// Returns the public key as a JSON Web Key Set, as `/openid/v1/jwks` serves it.
    pub(crate) fn jwks(&self) -> Value {
        let components: PublicKeyComponents<Vec<u8>> = self.key_pair.public().into();
        json!({
            "keys": [{
                "use": "sig",
                "kty": "RSA",
                "kid": self.key_id,
                "alg": "RS256",
                "n": URL_SAFE_NO_PAD.encode(&components.n),
                "e": URL_SAFE_NO_PAD.encode(&components.e),
            }]
        })
    }

    /// Signs `claims` as a compact JWS with an RS256 header.
    pub(crate) fn sign(&self, claims: &Value) -> String {
        let header = json!({ "alg": "RS256", "kid": self.key_id });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key_pair.public().modulus_len()];
        self.key_pair
            .sign(
                &RSA_PKCS1_SHA256,
                &self.random,
                signing_input.as_bytes(),
                &mut signature,
            )
            .expect("RSA signing with a valid key and a buffer of the modulus length succeeds");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// Returns the claims of `token` when it is a compact JWS with an RS256 signature of this
    /// key, or `None` for anything else. Claims are not checked here.
    pub(crate) fn verify(&self, token: &str) -> Option<Value> {
        let (signing_input, signature) = token.rsplit_once('.')?;
        let (header, payload) = signing_input.split_once('.')?;
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header["alg"] != "RS256" {
            return None;
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let components: PublicKeyComponents<Vec<u8>> = self.key_pair.public().into();
        let public = RsaPublicKeyComponents {
            n: components.n,
            e: components.e,
        };
        public
            .verify(
                &RSA_PKCS1_2048_8192_SHA256,
                signing_input.as_bytes(),
                &signature,
            )
            .ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }
}

/// Objects a bound service account token names: the pod, its node and its service account.
#[derive(Clone, Debug)]
pub(crate) struct TokenBinding {
    pub(crate) namespace: String,
    pub(crate) service_account: (String, String),
    pub(crate) pod: Option<(String, String)>,
    pub(crate) node: Option<(String, String)>,
}

/// Builds the claims of a token for `binding`, issued at `issued_at` for `lifetime`.
pub(crate) fn projected_claims(
    issuer: &str,
    audiences: &[String],
    binding: &TokenBinding,
    issued_at: SystemTime,
    lifetime: Duration,
) -> Value {
    let issued = issued_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (account_name, account_uid) = &binding.service_account;
    let mut kubernetes = json!({
        "namespace": binding.namespace,
        "serviceaccount": { "name": account_name, "uid": account_uid },
    });
    if let Some((name, uid)) = &binding.pod {
        kubernetes["pod"] = json!({ "name": name, "uid": uid });
    }
    if let Some((name, uid)) = &binding.node {
        kubernetes["node"] = json!({ "name": name, "uid": uid });
    }
    json!({
        "aud": audiences,
        "exp": issued + lifetime.as_secs(),
        "iat": issued,
        "nbf": issued,
        "iss": issuer,
        "jti": crate::ids::uuid(),
        "kubernetes.io": kubernetes,
        "sub": format!("system:serviceaccount:{}:{account_name}", binding.namespace),
    })
}

#[cfg(test)]
mod tests {
    use ring::signature::RsaPublicKeyComponents;

    use super::*;

    #[test]
    fn signature_verifies_with_published_key() {
        let key = SigningKey::load();
        let token = key.sign(&json!({ "sub": "x" }));
        let (signing_input, signature) = token.rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();

        let jwks = key.jwks();
        let jwk = &jwks["keys"][0];
        let decode = |field: &str| {
            URL_SAFE_NO_PAD
                .decode(jwk[field].as_str().unwrap())
                .unwrap()
        };
        let public = RsaPublicKeyComponents {
            n: decode("n"),
            e: decode("e"),
        };
        let verified = public.verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            signing_input.as_bytes(),
            &signature,
        );
        assert!(verified.is_ok());

        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], jwk["kid"]);
    }
}
