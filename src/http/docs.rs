//! The OpenAPI document's frame: what the service is, how callers authenticate, and the
//! schemas every operation shares. The operations come from the handlers' own annotations.

use utoipa::openapi::RefOr;
use utoipa::openapi::content::Content;
use utoipa::openapi::header::Header;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Ref, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::ErrorEnvelope;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "token-limits",
        description = "Enforces and tracks per-user daily LLM token limits. Every endpoint but \
            the operations ones needs `Authorization: Bearer <Firebase ID token>`; the admin \
            endpoints need the `admin` custom claim.",
    ),
    components(schemas(ErrorEnvelope)),
    modifiers(&BearerAuth),
    tags(
        (name = "usage", description = "A user's own usage: check and record, today, history"),
        (name = "admin", description = "Reports across all users, for admins"),
        (name = "operations", description = "Health, readiness and this document"),
    )
)]
pub struct ApiDoc;

/// Firebase ID tokens, as `Authorization: Bearer`.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A Firebase ID token"))
                    .build(),
            ),
        );
    }
}

/// Completes the document that the handlers' annotations made: the responses every
/// authenticated operation shares, written once here, and the bounds that come from the
/// configuration.
pub fn complete(document: &mut utoipa::openapi::OpenApi, bounds: ConfiguredBounds) {
    for operation in document.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
    }) {
        let authenticated = operation
            .security
            .as_ref()
            .is_some_and(|requirements| !requirements.is_empty());
        if !authenticated {
            continue;
        }
        let admin = operation
            .tags
            .as_ref()
            .is_some_and(|tags| tags.iter().any(|tag| tag == "admin"));
        let responses = &mut operation.responses.responses;
        let has_body = operation.request_body.is_some();
        for (status, response) in shared_responses(admin, has_body) {
            responses
                .entry(status.to_owned())
                .or_insert(response.into());
        }
    }
    state_bounds(document, bounds);
}

/// The bounds of request bodies that come from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ConfiguredBounds {
    pub max_tokens_per_request: i64,
    pub max_reservation_ttl_secs: i64,
}

fn shared_responses(admin: bool, has_body: bool) -> Vec<(&'static str, Response)> {
    let error = |description: &str| {
        ResponseBuilder::new().description(description).content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorEnvelope"))),
        )
    };
    let text_header = || Header::new(ObjectBuilder::new().schema_type(Type::String));
    let seconds_header = || Header::new(ObjectBuilder::new().schema_type(Type::Integer));
    let mut shared = vec![
        (
            "401",
            error("Missing or invalid ID token")
                .header("WWW-Authenticate", text_header())
                .build(),
        ),
        (
            "500",
            error("Internal error, or a stored document that must be repaired (named)").build(),
        ),
        (
            "503",
            error(
                "The store, the user directory or the signing keys are unavailable; the \
                 message says whether anything may have been recorded",
            )
            .header("Retry-After", seconds_header())
            .build(),
        ),
    ];
    if admin {
        shared.push(("403", error("Not an admin").build()));
    }
    if has_body {
        shared.push(("413", error("Body too large").build()));
        shared.push(("415", error("Body is not JSON").build()));
    }
    shared
}

/// `MAX_TOKENS_PER_REQUEST` as every body's maximum of tokens, and
/// `RESERVATION_MAX_TTL_SECS` as the maximum `ttlSeconds`, so the document states the real
/// bounds.
fn state_bounds(document: &mut utoipa::openapi::OpenApi, bounds: ConfiguredBounds) {
    let Some(components) = document.components.as_mut() else {
        return;
    };
    let fields = [
        ("RecordBody", "tokens", bounds.max_tokens_per_request),
        ("ReserveBody", "tokens", bounds.max_tokens_per_request),
        ("CommitBody", "tokens", bounds.max_tokens_per_request),
        ("ReserveBody", "ttlSeconds", bounds.max_reservation_ttl_secs),
    ];
    for (schema, field, maximum) in fields {
        if let Some(RefOr::T(Schema::Object(body))) = components.schemas.get_mut(schema)
            && let Some(RefOr::T(Schema::Object(value))) = body.properties.get_mut(field)
        {
            value.maximum = Some(maximum.into());
        }
    }
}
