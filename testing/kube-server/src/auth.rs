//! Bearer tokens and what each may do, in the shape of RBAC policy rules.

use std::collections::HashMap;

use crate::status::ApiError;

/// One RBAC-like rule: the verbs allowed on the resources, in some namespaces or in all.
///
/// Resources are named as RBAC names them, with subresources after a slash
/// (`pods`, `serviceaccounts/token`). `"*"` in `verbs` or `resources` matches anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub resources: Vec<String>,
    /// Namespaces of the grant. `None` grants the rule in every namespace and at the cluster
    /// scope, as a ClusterRole bound with a ClusterRoleBinding does. `Some` grants it only in
    /// these namespaces.
    pub namespaces: Option<Vec<String>>,
}

impl Rule {
    /// Creates a cluster-wide rule.
    pub fn new(verbs: &[&str], resources: &[&str]) -> Rule {
        Rule {
            verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
            resources: resources.iter().map(|r| (*r).to_owned()).collect(),
            namespaces: None,
        }
    }

    /// Limits the rule to `namespaces`, as a RoleBinding in each would.
    pub fn in_namespaces(mut self, namespaces: &[&str]) -> Rule {
        self.namespaces = Some(namespaces.iter().map(|n| (*n).to_owned()).collect());
        self
    }

    fn allows(&self, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
        let listed = |list: &[String], item: &str| list.iter().any(|x| x == "*" || x == item);
        let in_scope = match (&self.namespaces, namespace) {
            (None, _) => true,
            (Some(allowed), Some(namespace)) => listed(allowed, namespace),
            (Some(_), None) => false,
        };
        in_scope && listed(&self.verbs, verb) && listed(&self.resources, resource)
    }
}

/// A user that authenticates with a bearer token.
#[derive(Clone, Debug)]
struct Identity {
    user: String,
    rules: Vec<Rule>,
}

/// Registered bearer tokens, and the rules granted to service accounts, whose tokens the
/// server issues and verifies itself.
#[derive(Default)]
pub(crate) struct Authenticator {
    tokens: HashMap<String, Identity>,
    /// Rules per (namespace, service account name), as RoleBindings and ClusterRoleBindings
    /// that name the service account grant them.
    service_accounts: HashMap<(String, String), Vec<Rule>>,
}

impl Authenticator {
    pub(crate) fn register(&mut self, token: &str, user: &str, rules: Vec<Rule>) {
        let identity = Identity {
            user: user.to_owned(),
            rules,
        };
        self.tokens.insert(token.to_owned(), identity);
    }

    pub(crate) fn revoke(&mut self, token: &str) -> bool {
        self.tokens.remove(token).is_some()
    }

    pub(crate) fn is_registered(&self, token: &str) -> bool {
        self.tokens.contains_key(token)
    }

    /// Adds `rules` to the grants of service account `namespace/name`.
    pub(crate) fn grant_service_account(&mut self, namespace: &str, name: &str, rules: Vec<Rule>) {
        self.service_accounts
            .entry((namespace.to_owned(), name.to_owned()))
            .or_default()
            .extend(rules);
    }

    /// Authorizes `verb` on `resource` for service account `namespace/name`, whose token
    /// the caller verified; returns the user name. A service account without grants may do
    /// nothing, as under RBAC.
    pub(crate) fn authorize_service_account(
        &self,
        (namespace, name): (&str, &str),
        verb: &str,
        resource: &str,
        target_namespace: Option<&str>,
    ) -> Result<String, ApiError> {
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let allowed = self
            .service_accounts
            .get(&(namespace.to_owned(), name.to_owned()))
            .is_some_and(|rules| {
                rules
                    .iter()
                    .any(|rule| rule.allows(verb, resource, target_namespace))
            });
        if allowed {
            Ok(user)
        } else {
            Err(ApiError::forbidden(&user, verb, resource, target_namespace))
        }
    }

    /// Authenticates `token` and authorizes `verb` on `resource`; returns the user name.
    pub(crate) fn authorize(
        &self,
        token: Option<&str>,
        verb: &str,
        resource: &str,
        namespace: Option<&str>,
    ) -> Result<String, ApiError> {
        let identity = token
            .and_then(|token| self.tokens.get(token))
            .ok_or_else(ApiError::unauthorized)?;
        let allowed = identity
            .rules
            .iter()
            .any(|rule| rule.allows(verb, resource, namespace));
        if allowed {
            Ok(identity.user.clone())
        } else {
            Err(ApiError::forbidden(
                &identity.user,
                verb,
                resource,
                namespace,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_grant_by_verb_resource_and_namespace() {
        let mut auth = Authenticator::default();
        auth.register(
            "t1",
            "agent",
            vec![
                Rule::new(&["list", "watch"], &["pods"]),
                Rule::new(&["create"], &["serviceaccounts/token"]).in_namespaces(&["prod"]),
            ],
        );
        assert_eq!(
            auth.authorize(Some("t1"), "list", "pods", None).unwrap(),
            "agent"
        );
        assert!(auth
            .authorize(Some("t1"), "watch", "pods", Some("x"))
            .is_ok());
        let token_in_prod =
            auth.authorize(Some("t1"), "create", "serviceaccounts/token", Some("prod"));
        assert!(token_in_prod.is_ok());

        let forbidden = auth
            .authorize(Some("t1"), "create", "serviceaccounts/token", Some("dev"))
            .unwrap_err();
        assert_eq!(forbidden.code, 403);
        assert_eq!(
            forbidden.message,
            "serviceaccounts is forbidden: User \"agent\" cannot create resource \
             \"serviceaccounts\" subresource \"token\" in API group \"\" in the namespace \"dev\""
        );
        assert_eq!(
            auth.authorize(Some("t1"), "get", "secrets", Some("prod"))
                .unwrap_err()
                .code,
            403
        );
    }

    #[test]
    fn unknown_or_missing_token_is_unauthorized() {
        let auth = Authenticator::default();
        assert_eq!(
            auth.authorize(Some("nope"), "list", "pods", None)
                .unwrap_err()
                .code,
            401
        );
        assert_eq!(
            auth.authorize(None, "list", "pods", None).unwrap_err().code,
            401
        );
    }
}
