//! The web view: one page served on the collector's own listener at `/`, built from the query
//! API (`/api/v1/…`) by a small script. Everything it needs is compiled into the binary (no CDN,
//! nothing fetched from elsewhere: it works on an air-gapped host).
//!
//! The page and its assets hold no data, so they are served without a token; the data is read
//! from the API, which asks for one when tokens are configured. The page then asks for a
//! `reader` token once and keeps it in the tab's `sessionStorage`, sending it as
//! `Authorization: Bearer` (never in a URL or a cookie, so it is not sent on its own by the
//! browser and cross-site requests cannot use it).
//!
//! Every response here carries a Content-Security-Policy that allows only this origin's script
//! and style files (no inline script or style), no framing, and no other origin to connect to.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// An asset compiled into the binary.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// The page and what it loads: the whole web view.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../web/index.html"),
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/app.js"),
    },
    Asset {
        path: "/ui/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../web/app.css"),
    },
    Asset {
        path: "/ui/icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../web/icon.svg"),
    },
];

/// What the page may weigh, all assets together, uncompressed (the API's JSON comes on top).
pub const PAGE_WEIGHT_BUDGET: usize = 100 * 1024;

/// Only this origin's files; no inline script or style, no plugins, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The web view's routes.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new();
    for asset in ASSETS {
        router = router.route(asset.path, get(move || async move { serve(asset) }));
    }
    router
}

fn serve(asset: &'static Asset) -> Response {
    let mut response = (StatusCode::OK, asset.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // The assets change with the binary only; a reload after an upgrade must not mix versions.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    for (name, value) in security_headers() {
        headers.insert(name, value);
    }
    response
}

/// The headers every web view response carries.
pub fn security_headers() -> [(HeaderName, HeaderValue); 5] {
    [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_holds_its_weight_budget() {
        let total: usize = ASSETS.iter().map(|a| a.body.len()).sum();
        assert!(
            total <= PAGE_WEIGHT_BUDGET,
            "the web view weighs {total} bytes, over its budget of {PAGE_WEIGHT_BUDGET}"
        );
    }

    #[test]
    fn the_page_loads_only_its_own_files_and_nothing_inline() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap();
        // CSP without 'unsafe-inline' would refuse these; keep them out of the source too.
        assert!(!html.contains("<script>"), "inline script");
        assert!(!html.contains("style="), "inline style");
        assert!(!html.contains("<style"), "inline style");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "another origin"
        );
        // The SVG namespace is a name, not an address anything is fetched from.
        let js = std::str::from_utf8(ASSETS[1].body)
            .unwrap()
            .replace("'http://www.w3.org/2000/svg'", "");
        assert!(
            !js.contains("http://") && !js.contains("https://"),
            "the script names another origin"
        );
        assert!(!js.contains("eval(") && !js.contains("new Function"));
        assert!(
            !js.contains("innerHTML"),
            "markup is built as nodes, never parsed from text"
        );
        for asset in ASSETS {
            let text = String::from_utf8_lossy(asset.body);
            for referenced in ["/ui/app.js", "/ui/app.css", "/ui/icon.svg"] {
                if text.contains(referenced) {
                    assert!(ASSETS.iter().any(|a| a.path == referenced));
                }
            }
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }
}
