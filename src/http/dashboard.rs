//! `/dashboard`: the admin page, its files embedded in the binary at compile time. The page
//! holds no privileges: it signs an admin in and calls the admin API with that admin's own ID
//! token, as any other client does.
//!
//! The files live under `/dashboard/assets/<version>/`, `<version>` a digest of all of them,
//! so they can be cached for good; the page itself and its settings are revalidated.

use std::io::Write;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::ApiError;

/// Where the files are served; the page names them with the version inserted.
const ASSETS_PATH: &str = "/dashboard/assets";
/// What `index.html` writes where the files' base path goes.
const ASSETS_PLACEHOLDER: &str = "{{assets}}";
const INDEX_HTML: &str = include_str!("../../dashboard/index.html");
/// Google's endpoints the Firebase Auth SDK calls for an email and password sign-in and to
/// refresh its ID token.
const FIREBASE_AUTH_ENDPOINTS: [&str; 2] = [
    "https://identitytoolkit.googleapis.com",
    "https://securetoken.googleapis.com",
];

/// The page's files, by their path under `dashboard/`.
macro_rules! embedded {
    ($($path:literal),* $(,)?) => {
        [$(($path, include_bytes!(concat!("../../dashboard/", $path)).as_slice()),)*]
    };
}

/// Every file but `index.html`; the vendored files' licences are served beside them.
const FILES: [(&str, &[u8]); 25] = embedded![
    "app.css",
    "icon.svg",
    "js/app.js",
    "js/api.js",
    "js/charts.js",
    "js/dates.js",
    "js/dom.js",
    "js/live.js",
    "js/pager.js",
    "js/session.js",
    "js/views/activity.js",
    "js/views/audit.js",
    "js/views/month.js",
    "js/views/notifications.js",
    "js/views/overrides.js",
    "js/views/summary.js",
    "js/views/user.js",
    "js/views/users.js",
    "js/views/what-if.js",
    "vendor/firebase/firebase-app.js",
    "vendor/firebase/firebase-auth.js",
    "vendor/firebase/LICENSE",
    "vendor/uplot/LICENSE",
    "vendor/uplot/uPlot.iife.min.js",
    "vendor/uplot/uPlot.min.css",
];

/// What the page needs to know of the deployment, from the configuration.
#[derive(Debug, Clone)]
pub struct DashboardSettings {
    /// The Firebase project: a `demo-` one offers the dev-token box.
    pub project_id: String,
    /// `RESET_TIMEZONE`: the zone in which the page counts today.
    pub time_zone: chrono_tz::Tz,
    /// The Firebase web app that signs admins in; without it, no sign-in form.
    pub web_app: Option<FirebaseWebApp>,
}

/// A Firebase web app's public settings, as its console shows them.
#[derive(Debug, Clone)]
pub struct FirebaseWebApp {
    pub api_key: String,
    pub auth_domain: String,
    /// `FIREBASE_AUTH_EMULATOR_HOST`: sign-in goes to this Auth emulator instead of Google.
    pub auth_emulator_host: Option<String>,
}

/// `/dashboard/config.json`: what the page starts from.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PageConfig {
    project_id: String,
    time_zone: String,
    /// The Firebase web app's settings; `null`: no sign-in form.
    firebase: Option<FirebaseConfig>,
    /// Whether the dev-token box is offered: only in a `demo-` project.
    dev_tokens: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FirebaseConfig {
    api_key: String,
    auth_domain: String,
    project_id: String,
    /// `http://host:port` of the Auth emulator, for the SDK's `connectAuthEmulator`.
    auth_emulator_url: Option<String>,
}

/// One file as served: its body, its gzip form when that is smaller, and their ETags.
struct Asset {
    content_type: &'static str,
    body: Bytes,
    etag: HeaderValue,
    gzipped: Option<(Bytes, HeaderValue)>,
}

impl Asset {
    fn new(path: &str, body: Bytes) -> Self {
        let digest = hex(&Sha256::digest(&body)[..16]);
        let gzipped = gzip(&body)
            .filter(|packed| packed.len() < body.len())
            .map(|packed| (Bytes::from(packed), etag(&format!("{digest}.gz"))));
        Self {
            content_type: content_type(path),
            body,
            etag: etag(&digest),
            gzipped,
        }
    }
}

/// Every file by path, and the version that names this set of them.
struct Assets {
    version: String,
    files: Vec<(&'static str, Asset)>,
}

/// Built once per process: the files are the same for every router.
fn assets() -> &'static Assets {
    static ASSETS: OnceLock<Assets> = OnceLock::new();
    ASSETS.get_or_init(|| {
        let mut hasher = Sha256::new();
        let files = FILES
            .into_iter()
            .map(|(path, body)| {
                hasher.update(path.as_bytes());
                hasher.update((body.len() as u64).to_be_bytes());
                hasher.update(body);
                (path, Asset::new(path, Bytes::from_static(body)))
            })
            .collect();
        Assets {
            version: hex(&hasher.finalize()[..8]),
            files,
        }
    })
}

/// What every request of the page shares, made once from the settings.
struct Page {
    html: Asset,
    csp: HeaderValue,
    config: Bytes,
}

pub fn router<S: Clone + Send + Sync + 'static>(settings: &DashboardSettings) -> Router<S> {
    let assets = assets();
    let html = INDEX_HTML.replace(
        ASSETS_PLACEHOLDER,
        &format!("{ASSETS_PATH}/{}", assets.version),
    );
    let sign_in = firebase_sign_in(settings);
    let page = Arc::new(Page {
        html: Asset::new("index.html", Bytes::from(html)),
        csp: content_security_policy(sign_in.as_ref()),
        config: page_config(settings, sign_in),
    });
    Router::new()
        .route("/dashboard", get(index))
        .route(
            "/dashboard/",
            get(|| async { Redirect::permanent("/dashboard") }),
        )
        .route("/dashboard/config.json", get(config))
        .route("/dashboard/assets/{version}/{*path}", get(asset))
        .with_state(page)
}

async fn index(State(page): State<Arc<Page>>, request: HeaderMap) -> Response {
    let mut response = serve(&page.html, &request, "no-cache");
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, page.csp.clone());
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn config(State(page): State<Arc<Page>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        page.config.clone(),
    )
        .into_response()
}

async fn asset(
    Path((version, path)): Path<(String, String)>,
    request: HeaderMap,
) -> Result<Response, ApiError> {
    let assets = assets();
    // Another version's files are not these: a page that names them must be reloaded.
    if version != assets.version {
        return Err(ApiError::NotFound);
    }
    let (_, asset) = assets
        .files
        .iter()
        .find(|(name, _)| *name == path)
        .ok_or(ApiError::NotFound)?;
    Ok(serve(
        asset,
        &request,
        "public, max-age=31536000, immutable",
    ))
}

/// The asset, gzipped when the client takes it, or 304 when the client holds it already.
fn serve(asset: &Asset, request: &HeaderMap, cache_control: &'static str) -> Response {
    let gzip = asset
        .gzipped
        .as_ref()
        .filter(|_| accepts_gzip(request))
        .map(|gzipped| (&gzipped.0, &gzipped.1));
    let (body, etag) = gzip.unwrap_or((&asset.body, &asset.etag));
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, etag.clone());
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if holds(request, etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    if gzip.is_some() {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    (headers, body.clone()).into_response()
}

/// `If-None-Match` names this ETag (compared weakly, as RFC 9110 says for GET) or `*`.
fn holds(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let Some(Ok(candidates)) = request
        .get(header::IF_NONE_MATCH)
        .map(|value| value.to_str())
    else {
        return false;
    };
    let ours = etag.to_str().unwrap_or_default();
    candidates.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.trim_start_matches("W/") == ours.trim_start_matches("W/")
    })
}

/// `Accept-Encoding` lists gzip with a weight above 0.
fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|param| {
                param
                    .strip_prefix("q=")
                    .and_then(|weight| weight.parse::<f32>().ok())
                    .is_some_and(|weight| weight <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// How the page signs admins in with the Firebase Auth SDK: the SDK's settings, and the
/// origins it calls (Google's endpoints, or the Auth emulator's).
struct FirebaseSignIn {
    config: FirebaseConfig,
    origins: Vec<String>,
}

/// `None` without a web app, or when `FIREBASE_AUTH_EMULATOR_HOST` is not `host:port`: the
/// SDK would then call Google with an emulator's settings.
fn firebase_sign_in(settings: &DashboardSettings) -> Option<FirebaseSignIn> {
    let web_app = settings.web_app.as_ref()?;
    let (auth_emulator_url, origins) = match web_app.auth_emulator_host.as_deref() {
        None => (None, FIREBASE_AUTH_ENDPOINTS.map(str::to_owned).to_vec()),
        Some(host) => {
            let origin = auth_emulator_origin(host)?;
            (Some(origin.clone()), vec![origin])
        }
    };
    Some(FirebaseSignIn {
        config: FirebaseConfig {
            api_key: web_app.api_key.clone(),
            auth_domain: web_app.auth_domain.clone(),
            project_id: settings.project_id.clone(),
            auth_emulator_url,
        },
        origins,
    })
}

/// `http://host:port` of the Auth emulator, when `host` is a `host:port`.
fn auth_emulator_origin(host: &str) -> Option<String> {
    match host.parse::<axum::http::uri::Authority>() {
        Ok(authority) if !host.contains('@') => Some(format!("http://{authority}")),
        _ => {
            tracing::warn!(
                host,
                "FIREBASE_AUTH_EMULATOR_HOST is not host:port: the dashboard offers no sign-in"
            );
            None
        }
    }
}

/// Scripts, styles and images from the service alone; connections to the service and to what
/// the sign-in calls; nothing inline, no frames, no plugins, and no framing of the page by
/// another site.
fn content_security_policy(sign_in: Option<&FirebaseSignIn>) -> HeaderValue {
    let mut connect = vec!["'self'"];
    if let Some(sign_in) = sign_in {
        connect.extend(sign_in.origins.iter().map(String::as_str));
    }
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src {}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        connect.join(" ")
    );
    // The origins are parsed URI authorities, so the policy is visible ASCII.
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'none'"))
}

fn page_config(settings: &DashboardSettings, sign_in: Option<FirebaseSignIn>) -> Bytes {
    let config = PageConfig {
        project_id: settings.project_id.clone(),
        time_zone: settings.time_zone.name().to_owned(),
        firebase: sign_in.map(|sign_in| sign_in.config),
        dev_tokens: settings.project_id.starts_with("demo-"),
    };
    serde_json::to_vec(&config).unwrap_or_default().into()
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "text/plain; charset=utf-8",
    }
}

fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(body).ok()?;
    encoder.finish().ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn etag(tag: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{tag}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), HeaderValue::from_str(value).unwrap()))
            .collect()
    }

    #[test]
    fn gzip_is_chosen_only_when_accepted() {
        for (accepted, expected) in [
            ("gzip, deflate, br", true),
            ("br;q=1.0, gzip;q=0.5", true),
            ("*", true),
            ("gzip;q=0", false),
            ("br", false),
            ("identity", false),
        ] {
            let request = headers(&[(header::ACCEPT_ENCODING, accepted)]);
            assert_eq!(accepts_gzip(&request), expected, "{accepted}");
        }
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn if_none_match_is_compared_weakly() {
        let etag = HeaderValue::from_static("\"abc\"");
        for (sent, expected) in [
            ("\"abc\"", true),
            ("W/\"abc\"", true),
            ("\"x\", \"abc\"", true),
            ("*", true),
            ("\"abd\"", false),
        ] {
            assert_eq!(
                holds(&headers(&[(header::IF_NONE_MATCH, sent)]), &etag),
                expected,
                "{sent}"
            );
        }
        assert!(!holds(&HeaderMap::new(), &etag));
    }

    #[test]
    fn an_emulator_host_that_is_not_host_and_port_is_not_put_in_the_policy() {
        assert_eq!(
            auth_emulator_origin("127.0.0.1:9099").as_deref(),
            Some("http://127.0.0.1:9099")
        );
        for bad in ["127.0.0.1:9099; script-src *", "a b", "user@host:1", ""] {
            assert_eq!(auth_emulator_origin(bad), None, "{bad}");
        }
    }
}
