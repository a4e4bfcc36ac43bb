//! Decoding Flink's answers: JSON that is not JSON told from JSON of an unexpected shape, and
//! Flink's own error bodies cut to a readable length.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::errors::FetchError;
use super::limits::BODY_SNIPPET_CHARS;

/// Decodes a body, telling a body that is not JSON from JSON of an unexpected shape.
pub(super) fn decode_json<T: DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, FetchError> {
    serde_json::from_slice(body).map_err(|e| {
        // A type mismatch can be hit before a syntax error further on (`{oops` where a list
        // is expected): report the body as invalid JSON whenever it is.
        let e = if e.is_data() {
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Err(syntax) => syntax,
                Ok(_) => e,
            }
        } else {
            e
        };
        let text = e.to_string();
        // serde_json appends " at line L column C"; the position is reported separately.
        let reason = match text.rfind(" at line ") {
            Some(i) => text[..i].to_string(),
            None => text,
        };
        let (url, line, column) = (url.to_string(), e.line(), e.column());
        if e.is_data() {
            FetchError::UnexpectedJson {
                url,
                line,
                column,
                reason,
            }
        } else {
            FetchError::InvalidJson {
                url,
                line,
                column,
                reason,
                body_start: snippet(&String::from_utf8_lossy(body)),
            }
        }
    })
}

/// Flink's error bodies are `{"errors":["…", …]}`; anything else is quoted in part.
pub(super) fn flink_error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<String>,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) if !e.errors.is_empty() => snippet(&e.errors.join("; ")),
        _ => {
            let text = String::from_utf8_lossy(body);
            if text.trim().is_empty() {
                "(empty body)".to_string()
            } else {
                snippet(text.trim())
            }
        }
    }
}

pub(super) fn snippet(s: &str) -> String {
    match s.char_indices().nth(BODY_SNIPPET_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
