//! The OpenAPI document's frame: what the service is, how callers authenticate, and the
//! schemas every operation shares. The operations come from the handlers' own annotations.

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
