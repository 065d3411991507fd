//! `/dashboard`: the page with its Content-Security-Policy, every file of `dashboard/` with its
//! content type and cache headers, and the settings the page starts from. What the page does
//! in a browser is tested in `tests/browser/`.

use std::io::Read;
use std::path::{Path, PathBuf};

use reqwest::header;
use serde_json::{Value, json};
use token_limits::config::Cli;

use crate::helpers::*;

const FILES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard");

/// Everything but the connections is fixed: no inline script or style, nothing from elsewhere.
fn policy(connect: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

async fn page(app: &TestApp) -> (reqwest::header::HeaderMap, String) {
    let response = app.client.get(app.url("/dashboard")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    (headers, response.text().await.unwrap())
}

async fn config(app: &TestApp) -> Value {
    let response = app
        .client
        .get(app.url("/dashboard/config.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    response.json().await.unwrap()
}

/// `/dashboard/assets/<version>`, as the page names it.
fn assets_base(html: &str) -> String {
    let start = html
        .find("/dashboard/assets/")
        .expect("the page names no asset");
    let version_end = html[start + "/dashboard/assets/".len()..]
        .find('/')
        .unwrap();
    html[start..start + "/dashboard/assets/".len() + version_end].to_owned()
}

/// Every file under `dashboard/` that the page may load: all but the page itself, which is
/// served at `/dashboard`, and the notes for people.
fn files_on_disk() -> Vec<String> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(Path::new(FILES), &mut found);
    let mut names: Vec<String> = found
        .iter()
        .map(|path| {
            path.strip_prefix(FILES)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name != "index.html" && !name.ends_with(".md"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn the_page_is_served_with_a_policy_that_allows_nothing_inline_or_from_elsewhere() {
    let app = spawn_app().await;
    let (headers, html) = page(&app).await;
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(
        headers[header::CONTENT_SECURITY_POLICY],
        policy("'self'").as_str()
    );
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
    // The page keeps to its own policy: every script is a file, and no element has a style.
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=\"/dashboard/assets/").count()
            + html
                .matches("<script type=\"module\" src=\"/dashboard/assets/")
                .count()
    );
    for inline in [" style=", "<style", "javascript:", " onclick=", " onload="] {
        assert!(!html.contains(inline), "the page has {inline}");
    }
    assert!(!html.contains("{{assets}}"), "a placeholder is left");

    // Revalidated: the same page is 304 for the ETag the client holds.
    let etag = headers[header::ETAG].to_str().unwrap();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "{etag} is not strong"
    );
    let again = app
        .client
        .get(app.url("/dashboard"))
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());

    let slash = app.client.get(app.url("/dashboard/")).send().await.unwrap();
    assert_eq!(
        (slash.status().as_u16(), slash.url().path()),
        (200, "/dashboard")
    );
}

#[tokio::test]
async fn the_policy_lets_the_page_reach_only_the_sign_in_it_is_given() {
    let with_google = spawn_app_with(&["--firebase-web-api-key=AIzaKey_1-x"], |_| {}).await;
    let (headers, _) = page(&with_google).await;
    assert_eq!(
        headers[header::CONTENT_SECURITY_POLICY],
        policy("'self' https://identitytoolkit.googleapis.com https://securetoken.googleapis.com")
            .as_str()
    );

    let with_emulator = spawn_app_with(&["--firebase-web-api-key=AIzaKey_1-x"], |config| {
        config.firebase_auth_emulator_host = Some("127.0.0.1:9099".to_owned());
    })
    .await;
    let (headers, _) = page(&with_emulator).await;
    assert_eq!(
        headers[header::CONTENT_SECURITY_POLICY],
        policy("'self' http://127.0.0.1:9099").as_str()
    );
}

#[tokio::test]
async fn every_file_of_the_page_is_served_with_its_type_and_cached_for_good() {
    let app = spawn_app().await;
    let (_, html) = page(&app).await;
    let base = assets_base(&html);
    for name in files_on_disk() {
        let response = app
            .client
            .get(app.url(&format!("{base}/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name} is not served");
        let expected_type = match name.rsplit_once('.').map(|(_, extension)| extension) {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            _ => "text/plain; charset=utf-8",
        };
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], expected_type, "{name}");
        assert_eq!(
            headers[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable",
            "{name}"
        );
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{name}");
        assert!(headers.contains_key(header::ETAG), "{name}");
        let on_disk = std::fs::read(Path::new(FILES).join(&name)).unwrap();
        assert_eq!(response.bytes().await.unwrap(), on_disk, "{name}");
    }
    // Each file the page names, and each module a module imports, is among them.
    let served = files_on_disk();
    let mut named: Vec<String> = html
        .split(&format!("{base}/"))
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_owned())
        .collect();
    for module in served.iter().filter(|name| name.starts_with("js/")) {
        let source = std::fs::read_to_string(Path::new(FILES).join(module)).unwrap();
        let folder = Path::new(module).parent().unwrap();
        for import in source.split(['\'']).filter(|part| part.ends_with(".js")) {
            let joined = folder.join(import);
            let mut resolved = Vec::new();
            for part in joined.components() {
                match part {
                    std::path::Component::ParentDir => {
                        resolved.pop();
                    }
                    std::path::Component::Normal(name) => resolved.push(name.to_string_lossy()),
                    _ => {}
                }
            }
            named.push(resolved.join("/"));
        }
    }
    for name in named {
        assert!(served.contains(&name), "{name} is named but not served");
    }
}

#[tokio::test]
async fn files_are_gzipped_for_clients_that_take_gzip() {
    let app = spawn_app().await;
    let (_, html) = page(&app).await;
    let url = app.url(&format!(
        "{}/vendor/firebase/firebase-auth.js",
        assets_base(&html)
    ));
    // What is on the wire: no encoding asked for or undone by the client itself.
    let client = reqwest::Client::builder().no_gzip().build().unwrap();
    let plain = client.get(&url).send().await.unwrap();
    let plain_etag = plain.headers()[header::ETAG].clone();
    assert!(!plain.headers().contains_key(header::CONTENT_ENCODING));
    let plain = plain.bytes().await.unwrap();

    let packed = client
        .get(&url)
        .header(header::ACCEPT_ENCODING, "gzip, deflate, br")
        .send()
        .await
        .unwrap();
    assert_eq!(packed.headers()[header::CONTENT_ENCODING], "gzip");
    assert_eq!(packed.headers()[header::VARY], "Accept-Encoding");
    assert_ne!(packed.headers()[header::ETAG], plain_etag);
    let packed = packed.bytes().await.unwrap();
    assert!(
        packed.len() * 2 < plain.len(),
        "{} of {}",
        packed.len(),
        plain.len()
    );
    let mut unpacked = Vec::new();
    flate2::read::GzDecoder::new(&packed[..])
        .read_to_end(&mut unpacked)
        .unwrap();
    assert_eq!(unpacked, plain);

    // A client holding the file revalidates it for nothing.
    let again = client
        .get(&url)
        .header(header::IF_NONE_MATCH, plain_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
}

#[tokio::test]
async fn files_of_another_version_or_none_are_a_json_404() {
    let app = spawn_app().await;
    let (_, html) = page(&app).await;
    let base = assets_base(&html);
    for path in [
        "/dashboard/assets/0123456789abcdef/js/app.js".to_owned(),
        format!("{base}/js/nothing.js"),
        format!("{base}/../../Cargo.toml"),
        format!("{base}/vendor/README.md"),
    ] {
        let response = app.client.get(app.url(&path)).send().await.unwrap();
        assert_error(response, 404, "not_found").await;
    }
}

#[tokio::test]
async fn the_settings_offer_dev_tokens_only_in_a_demo_project() {
    // The tests' project is a real one: signed tokens only, so no dev-token box.
    let production = spawn_app_with(&["--firebase-web-api-key=AIzaKey_1-x"], |_| {}).await;
    assert_eq!(
        config(&production).await,
        json!({
            "projectId": PROJECT,
            "timeZone": "UTC",
            "firebase": {
                "apiKey": "AIzaKey_1-x",
                "authDomain": format!("{PROJECT}.firebaseapp.com"),
                "projectId": PROJECT,
                "authEmulatorUrl": null,
            },
            "devTokens": false,
        })
    );

    let demo = spawn_app_with(
        &[
            "--firebase-auth-domain=login.example.com",
            "--reset-timezone=Europe/Paris",
        ],
        |config| config.store.firebase_project_id = "demo-dashboard".to_owned(),
    )
    .await;
    assert_eq!(
        config(&demo).await,
        json!({
            "projectId": "demo-dashboard",
            "timeZone": "Europe/Paris",
            "firebase": null,
            "devTokens": true,
        })
    );

    let emulator = spawn_app_with(&["--firebase-web-api-key=any"], |config| {
        config.firebase_auth_emulator_host = Some("127.0.0.1:9099".to_owned());
    })
    .await;
    let settings = config(&emulator).await;
    assert_eq!(
        settings["firebase"]["authEmulatorUrl"],
        "http://127.0.0.1:9099"
    );
    assert_eq!(settings["devTokens"], false);
}

#[test]
fn web_app_settings_that_are_not_a_key_or_a_host_are_refused() {
    for bad in [
        "--firebase-web-api-key=",
        "--firebase-web-api-key=a key",
        "--firebase-web-api-key=key\"}",
        "--firebase-auth-domain=https://x.firebaseapp.com",
        "--firebase-auth-domain=x.firebaseapp.com/path",
        "--firebase-auth-domain=X.com; script-src *",
    ] {
        assert!(
            Cli::try_parse_args(["token-limits", "serve", bad]).is_err(),
            "{bad} accepted"
        );
    }
    assert!(
        Cli::try_parse_args([
            "token-limits",
            "serve",
            "--firebase-web-api-key=AIzaSyD-x_1",
            "--firebase-auth-domain=my-app.firebaseapp.com",
        ])
        .is_ok()
    );
}
