//! Reads an integration key from its Secret; what went wrong, for status, when it cannot.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::domain::channel::Channel;
use crate::domain::status::{Problem, Reason};
use crate::pipeline::IlertPipelineSpec;
use crate::shell::ilert::IntegrationKey;

/// Reads the integration key from the pipeline's Secret; a problem for status if it cannot.
pub(crate) async fn read_key(
    client: &Client,
    namespace: &str,
    spec: &IlertPipelineSpec,
    channel: Channel,
) -> Result<IntegrationKey, Problem> {
    let Some((r, field)) = channel.secret_ref(spec) else {
        return Err(Problem {
            reason: Reason::KeyNotFound,
            message: "spec.alerts is not set".into(),
        });
    };
    let owner = channel.key_owner();
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match api.get(&r.name).await {
        Ok(s) => s,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return Err(Problem {
                reason: Reason::SecretNotFound,
                message: format!(
                    "Secret {}/{} not found ({field}): create it with the integration key of {owner} under key {}; events wait until then",
                    namespace, r.name, r.key
                ),
            });
        }
        Err(kube::Error::Api(s)) if s.code == 403 => {
            return Err(Problem {
                reason: Reason::SecretForbidden,
                message: format!(
                    "the controller may not read Secret {}/{} (403): grant it get on secrets",
                    namespace, r.name
                ),
            });
        }
        Err(e) => {
            return Err(Problem {
                reason: Reason::SecretUnavailable,
                message: format!("reading Secret {}/{} failed: {e}", namespace, r.name),
            });
        }
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .cloned()
        })
        // `echo key | base64` leaves a newline: never part of a key.
        .map(|v| IntegrationKey::new(v.trim().to_string()))
        .filter(|k| !k.expose().is_empty());
    value.ok_or_else(|| Problem {
        reason: Reason::KeyNotFound,
        message: format!(
            "Secret {}/{} has no non-empty key {}: add the integration key of {owner} under that key, or set {field}.key",
            namespace, r.name, r.key
        ),
    })
}
