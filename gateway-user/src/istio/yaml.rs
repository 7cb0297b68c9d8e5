//! The only module that names the YAML crate, so replacing it touches one file.
//!
//! Why `serde_norway`: `serde_yaml` (dtolnay) was archived in March 2024 and
//! its `unsafe-libyaml` with it. Of the forks with the same API:
//! - `serde_yml` is flagged by RustSec (RUSTSEC-2025-0068: unsound, and
//!   unmaintained; its `libyml` backend is RUSTSEC-2025-0067), and its latest
//!   release is only a deprecation shim over another crate;
//! - `serde_yaml_ng` is maintained but still sits on the archived
//!   `unsafe-libyaml`;
//! - `serde_norway` is maintained, keeps the serde_yaml 0.9 API, builds on a
//!   maintained fork of the parser (`unsafe-libyaml-norway`), and is the fork
//!   most projects moved to.
//!
//! Documents are read twice: once into a plain JSON value (to learn the kind
//! and to compare resources the way `kubectl apply` does), and once straight
//! into the typed model, because only the YAML deserializer knows line and
//! column numbers for type errors.

use serde::de::DeserializeOwned;

use super::error::Location;

/// Why one document could not be decoded.
#[derive(Debug)]
pub(crate) struct DecodeError {
    /// Field path such as `spec.tcp[0].route[1].weight`; empty at the root.
    pub path: String,
    pub message: String,
    pub location: Option<Location>,
}

/// The `---` separated documents of one YAML text.
pub(crate) struct Documents<'a> {
    inner: serde_norway::Deserializer<'a>,
}

pub(crate) fn documents(text: &str) -> Documents<'_> {
    Documents {
        inner: serde_norway::Deserializer::from_str(text),
    }
}

impl<'a> Iterator for Documents<'a> {
    type Item = Document<'a>;

    fn next(&mut self) -> Option<Document<'a>> {
        self.inner.next().map(|inner| Document { inner })
    }
}

pub(crate) struct Document<'a> {
    inner: serde_norway::Deserializer<'a>,
}

impl Document<'_> {
    pub fn decode<T: DeserializeOwned>(self) -> Result<T, DecodeError> {
        serde_path_to_error::deserialize(self.inner).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let inner = e.into_inner();
            let location = inner.location().map(|l| Location {
                line: l.line(),
                column: l.column(),
            });
            let message = clean_message(&inner.to_string(), &path, location);
            DecodeError {
                path,
                message,
                location,
            }
        })
    }
}

/// The YAML error's text repeats the position, and for type errors the
/// path of the enclosing value, which we report in their own fields; keep
/// only what is left. A parser error's second position (", while parsing a
/// block mapping at line 3 column 1") stays: it shows where the construct
/// began.
fn clean_message(message: &str, path: &str, location: Option<Location>) -> String {
    let mut m = message.to_string();
    if let Some(loc) = location {
        let at = format!(" at line {} column {}", loc.line, loc.column);
        if let Some(i) = m.find(&at) {
            m.replace_range(i..i + at.len(), "");
        }
    }
    if let Some((head, rest)) = m.split_once(": ") {
        if !head.is_empty() && path.starts_with(head) {
            m = rest.to_string();
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_error_has_line_and_column() {
        let text = "a: 1\n---\nkind: [unclosed\n";
        let mut docs = documents(text);
        let first = docs.next().map(|d| d.decode::<serde_json::Value>());
        assert!(matches!(first, Some(Ok(_))));
        let second = docs.next().map(|d| d.decode::<serde_json::Value>());
        let Some(Err(e)) = second else {
            panic!("expected a syntax error, got {second:?}");
        };
        let loc = e.location.expect("syntax errors have a location");
        assert_eq!(loc.line, 4, "{e:?}");
        assert!(loc.column >= 1);
    }

    #[test]
    fn type_error_has_path_without_repetition() {
        #[derive(Debug, serde::Deserialize)]
        #[expect(dead_code, reason = "only the error matters")]
        struct T {
            spec: Spec,
        }
        #[derive(Debug, serde::Deserialize)]
        #[expect(dead_code, reason = "only the error matters")]
        struct Spec {
            weight: i32,
        }
        let text = "spec:\n  weight: eighty\n";
        let e = documents(text)
            .next()
            .map(|d| d.decode::<T>())
            .and_then(Result::err)
            .expect("a type error");
        assert_eq!(e.path, "spec.weight");
        assert!(
            e.message.starts_with("invalid type: string \"eighty\""),
            "{e:?}"
        );
        assert!(!e.message.contains("line"), "{e:?}");
        assert_eq!(e.location.map(|l| l.line), Some(2));
    }
}
