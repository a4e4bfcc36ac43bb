//! A failed request in words: reqwest's own message ("error sending request") leaves out what
//! actually failed, which sits at the end of the chain of sources ("Connection refused (os error
//! 111)", "invalid peer certificate: UnknownIssuer").

use std::error::Error;

/// `e` and its sources, outermost first.
pub fn causes<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(e), |e: &&'a (dyn Error + 'static)| (*e).source())
}

/// The innermost cause, which says what actually failed.
pub fn root_cause(e: &(dyn Error + 'static)) -> String {
    causes(e)
        .last()
        .map(ToString::to_string)
        .unwrap_or_else(|| e.to_string())
}

/// Every cause, outermost first, each once (a cause whose text an outer one already contains is
/// left out).
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

/// The TLS cause of a failed request (a certificate not trusted, a handshake refused), if TLS is
/// what failed: a rustls error in the chain, or — since rustls errors reach reqwest wrapped in
/// `io::Error`, often as their text only — a cause that speaks of certificates or the handshake.
pub fn tls_failure(e: &(dyn Error + 'static)) -> Option<String> {
    causes(e).find_map(|err| {
        if err.is::<rustls::Error>() {
            return Some(err.to_string());
        }
        let text = err.to_string();
        let lower = text.to_ascii_lowercase();
        (lower.contains("certificate") || lower.contains("handshake")).then_some(text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<dyn Error + 'static>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref()
        }
    }

    fn chain(texts: &[&'static str]) -> Layer {
        let mut inner: Option<Box<dyn Error>> = None;
        for t in texts.iter().rev() {
            inner = Some(Box::new(Layer(t, inner)));
        }
        match inner {
            Some(b) => *b.downcast::<Layer>().unwrap(),
            None => Layer("", None),
        }
    }

    #[test]
    fn the_chain_leaves_out_repeats_and_the_root_is_the_innermost() {
        let e = chain(&[
            "error sending request",
            "client error (Connect)",
            "Connection refused (os error 111)",
            "Connection refused (os error 111)",
        ]);
        assert_eq!(
            error_chain(&e),
            "error sending request: client error (Connect): Connection refused (os error 111)"
        );
        assert_eq!(root_cause(&e), "Connection refused (os error 111)");
    }

    #[test]
    fn tls_is_recognised_by_type_or_by_its_words() {
        let e = chain(&[
            "error sending request",
            "invalid peer certificate: UnknownIssuer",
        ]);
        assert_eq!(
            tls_failure(&e).as_deref(),
            Some("invalid peer certificate: UnknownIssuer")
        );
        let typed = Layer(
            "error sending request",
            Some(Box::new(rustls::Error::HandshakeNotComplete)),
        );
        assert!(tls_failure(&typed).is_some());
        let refused = chain(&["error sending request", "Connection refused (os error 111)"]);
        assert_eq!(tls_failure(&refused), None);
    }
}
