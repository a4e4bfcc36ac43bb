//! How the collector tells an error with its causes: the chain of sources, the innermost cause
//! (what actually failed: "Connection refused (os error 111)"), every cause in one line, and
//! whether TLS is what failed. Used by both HTTP clients (`client`, `flink_rest`).

use std::error::Error;

/// `e` and its sources, outermost first.
pub fn causes<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(e), |e: &&'a (dyn Error + 'static)| (*e).source())
}

/// The innermost cause, which says what actually failed ("Connection refused (os error 111)").
pub fn root_cause(e: &(dyn Error + 'static)) -> String {
    causes(e)
        .last()
        .map(ToString::to_string)
        .unwrap_or_else(|| e.to_string())
}

/// Every cause, outermost first, without repeats.
pub fn error_chain(e: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for err in causes(e) {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

/// The TLS cause of a request error (a certificate not trusted, a handshake refused), if any.
pub fn tls_failure(e: &(dyn Error + 'static)) -> Option<String> {
    for err in causes(e) {
        if err.is::<tokio_rustls::rustls::Error>() {
            return Some(err.to_string());
        }
        // rustls errors reach us wrapped in io::Error, sometimes as their text only.
        let text = err.to_string();
        if text.contains("certificate") || text.contains("peer sent no certificates") {
            return Some(text);
        }
    }
    None
}
