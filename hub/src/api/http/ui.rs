//! The fleet dashboard: HTML, CSS and JavaScript modules embedded in the binary, served at `/`
//! and `/ui/FILE` without a token (the page asks for one and calls the API with it). No build
//! step: these files are what the browser runs.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// Every file of the dashboard: its name under `/ui/`, its content type, its bytes.
pub(super) const FILES: &[(&str, &str, &str)] = &[
    ("api.js", "text/javascript; charset=utf-8", include_str!("ui/api.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("ui/app.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("ui/app.js")),
    ("charts.js", "text/javascript; charset=utf-8", include_str!("ui/charts.js")),
    ("sse.js", "text/javascript; charset=utf-8", include_str!("ui/sse.js")),
    ("util.js", "text/javascript; charset=utf-8", include_str!("ui/util.js")),
    ("views.js", "text/javascript; charset=utf-8", include_str!("ui/views.js")),
    ("workflows.js", "text/javascript; charset=utf-8", include_str!("ui/workflows.js")),
    ("services.js", "text/javascript; charset=utf-8", include_str!("ui/services.js")),
];

const INDEX: &str = include_str!("ui/index.html");

/// Scripts and styles from the hub only, no inline script, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // The files change with the binary: revalidate rather than run an old dashboard.
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, body).into_response()
}

pub(super) async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

pub(super) async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(file, _, _)| *file == name) {
        Some((_, content_type, body)) => page(content_type, body),
        None => super::not_found().await.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_stays_small() {
        let bytes: usize =
            FILES.iter().filter(|(name, ..)| !name.ends_with(".html")).map(|(_, _, body)| body.len()).sum();
        assert!(bytes < 150 * 1024, "the dashboard's JS and CSS are {bytes} bytes: over the 150 KiB budget");
    }

    #[test]
    fn every_file_the_page_loads_is_served() {
        let sources = std::iter::once(INDEX).chain(FILES.iter().map(|(_, _, body)| *body));
        for source in sources {
            // `/ui/NAME` in the page, `./NAME` in the modules' imports.
            for prefix in ["/ui/", "'./", "\"./"] {
                for (at, _) in source.match_indices(prefix) {
                    let rest = &source[at + prefix.len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                        .collect();
                    assert!(FILES.iter().any(|(file, ..)| *file == name), "{prefix}{name} is loaded but not served");
                }
            }
        }
    }
}
