//! Limits checked before the YAML parser sees a text, in one linear pass.
//!
//! The parser's time grows with the square of flow nesting (`[[[[...`):
//! 60,000 brackets hold it for seconds before it gives up at its recursion
//! limit. So the nesting is measured first, with a scanner that follows
//! YAML's lexical rules only as far as it must to find flow collections:
//! quoted scalars (whose brackets are text), comments, block scalars
//! (`|`, `>`: their lines are text), and, outside flow collections, where
//! a bracket starts one (at the start of a node) rather than sits inside a
//! plain scalar (`echo [x`). Where it is unsure it counts a bracket as an
//! opening, so its depth is never below the parser's; the fuzz target
//! `limits` checks that against the parser.
//!
//! Sizes follow the Kubernetes API server's: it refuses a request body
//! over 3 MiB and etcd an object over 1.5 MiB, so a resource too large for
//! a cluster is too large here too.

/// The most a file (or one file of an admin request) may hold.
pub const MAX_FILE_BYTES: usize = 1536 * 1024;
/// The most `---` separated documents in one file.
pub const MAX_DOCUMENTS: usize = 1000;
/// The deepest nesting of flow collections (`[`, `{`) allowed. Istio's
/// and the Gateway API's kinds nest about ten deep; the parser stops at
/// 128.
pub const MAX_FLOW_DEPTH: usize = 64;

/// A limit a text goes past, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// 1-based, counting `---` separated documents.
    pub document: usize,
    /// 1-based line and column of the byte that went past it, if one did.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

/// Checks `text` against the limits above.
pub fn check(text: &str) -> Result<(), Exceeded> {
    if text.len() > MAX_FILE_BYTES {
        return Err(Exceeded {
            document: 1,
            at: None,
            message: format!(
                "larger than the {} KiB a file may hold (the Kubernetes API server refuses \
                 objects over 1.5 MiB too)",
                MAX_FILE_BYTES / 1024
            ),
        });
    }
    let b = text.as_bytes();
    let mut document = 1;
    let mut depth = 0usize;
    let mut quote = Quote::None;
    // The last byte before this one that is not whitespace or in a
    // comment, on any line; `\n` at the start of a line in block context.
    let mut last = b'\n';
    // `last` at the end of the last line in block context that had one.
    let mut line_last = b'\n';
    // Where the token holding `last` starts, for anchors and tags.
    let mut last_token_start = 0usize;
    // Inside a block scalar whose header line was indented this much:
    // lines indented more are text.
    let mut block_scalar: Option<usize> = None;
    let mut line = 1usize;
    let mut line_start = 0usize;
    let mut i = 0usize;
    let mut starts_line = true;
    while i < b.len() {
        if starts_line {
            starts_line = false;
            let indent = b[i..].iter().take_while(|&&c| c == b' ').count();
            let rest = &b[i + indent..];
            let blank = rest.first().is_none_or(|&c| c == b'\n' || c == b'\r');
            if let Some(header) = block_scalar {
                if blank || indent > header {
                    i = next_line(b, i);
                    line += 1;
                    line_start = i;
                    starts_line = true;
                    continue;
                }
                block_scalar = None;
            }
            if quote == Quote::None && depth == 0 && indent == 0 && is_marker(rest) {
                document += 1;
                if document > MAX_DOCUMENTS {
                    return Err(Exceeded {
                        document,
                        at: Some((line, 1)),
                        message: format!("more than {MAX_DOCUMENTS} documents in one file"),
                    });
                }
                last = b'\n';
                line_last = b'\n';
                i += 3;
                continue;
            }
            if quote == Quote::None && depth == 0 {
                last = b'\n';
            }
        }
        let c = b[i];
        if c == b'\n' {
            let this_line = line_start;
            line += 1;
            line_start = i + 1;
            starts_line = true;
            if quote == Quote::None && depth == 0 {
                if let Some(indent) = block_scalar_header(b, this_line, i) {
                    block_scalar = Some(indent);
                }
                if last != b'\n' {
                    line_last = last;
                }
            }
            i += 1;
            continue;
        }
        match quote {
            Quote::Single => {
                if c == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    quote = Quote::None;
                    last = c;
                    last_token_start = i;
                }
                i += 1;
                continue;
            }
            Quote::Double => {
                if c == b'\\' && b.get(i + 1) != Some(&b'\n') {
                    i += 2;
                    continue;
                }
                if c == b'"' {
                    quote = Quote::None;
                    last = c;
                    last_token_start = i;
                }
                i += 1;
                continue;
            }
            Quote::None => {}
        }
        let after_space = i == line_start || matches!(b[i - 1], b' ' | b'\t');
        if c == b'#' && after_space {
            i = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p);
            continue;
        }
        if c == b' ' || c == b'\t' || c == b'\r' {
            i += 1;
            continue;
        }
        let at_node_start = if last == b'\n' {
            // A line's first node in block context. A quote there opens a
            // scalar after a line ending in an indicator (`key:`, `-`), at
            // a document's start, or as a key closed on this line; else it
            // may be text continuing a plain scalar of the line before.
            matches!(line_last, b':' | b'-' | b'?' | b'\n')
                || !matches!(c, b'\'' | b'"')
                || quoted_key(b, i)
        } else {
            node_start(b, last, last_token_start, i, depth > 0)
        };
        match c {
            b'\'' | b'"' if at_node_start => {
                quote = if c == b'\'' {
                    Quote::Single
                } else {
                    Quote::Double
                };
            }
            b'[' | b'{' if depth > 0 || at_node_start => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Err(Exceeded {
                        document,
                        at: Some((line, i - line_start + 1)),
                        message: format!(
                            "flow collections ([ and {{) nested more than {MAX_FLOW_DEPTH} deep"
                        ),
                    });
                }
            }
            b']' | b'}' if depth > 0 => depth -= 1,
            _ => {}
        }
        if i == 0 || matches!(b[i - 1], b' ' | b'\t' | b'\n' | b'[' | b'{' | b',') {
            last_token_start = i;
        }
        last = c;
        i += 1;
    }
    Ok(())
}

/// Whether the quote at `i` closes on its line and is followed by `:`,
/// as a quoted mapping key is.
fn quoted_key(b: &[u8], i: usize) -> bool {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() && b[j] != b'\n' {
        if q == b'"' && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == q {
            if q == b'\'' && b.get(j + 1) == Some(&b'\'') {
                j += 2;
                continue;
            }
            let rest = &b[j + 1..];
            let k = rest
                .iter()
                .take_while(|&&c| c == b' ' || c == b'\t')
                .count();
            return rest.get(k) == Some(&b':');
        }
        j += 1;
    }
    false
}

/// `---` or `...` alone, or followed by whitespace.
fn is_marker(rest: &[u8]) -> bool {
    (rest.starts_with(b"---") || rest.starts_with(b"..."))
        && rest
            .get(3)
            .is_none_or(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
}

fn next_line(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |p| i + p + 1)
}

/// If the line `b[start..end]` ends (comments aside) with a block scalar
/// header (`|`, `>`, with chomping and indentation indicators), the line's
/// indentation.
fn block_scalar_header(b: &[u8], start: usize, end: usize) -> Option<usize> {
    let line = &b[start..end];
    let mut code_end = line.len();
    for (j, &c) in line.iter().enumerate() {
        if c == b'#' && (j == 0 || matches!(line[j - 1], b' ' | b'\t')) {
            code_end = j;
            break;
        }
    }
    let code = line[..code_end].trim_ascii_end();
    let word_start = code
        .iter()
        .rposition(|&c| c == b' ' || c == b'\t')
        .map_or(0, |p| p + 1);
    let word = &code[word_start..];
    let header = matches!(word.first(), Some(b'|' | b'>'))
        && word[1..]
            .iter()
            .all(|c| matches!(c, b'-' | b'+' | b'1'..=b'9'));
    // `key: |`, `- |`, or a header alone on its line.
    let before = code[..word_start].trim_ascii_end();
    let last_word = before
        .iter()
        .rposition(|&c| c == b' ' || c == b'\t')
        .map_or(before, |p| &before[p + 1..]);
    let placed = before.is_empty()
        || matches!(before.last(), Some(b':' | b'-' | b'?'))
        || matches!(last_word.first(), Some(b'&' | b'!'));
    (header && placed).then(|| line.iter().take_while(|&&c| c == b' ').count())
}

/// Whether a byte at `i` begins a node: where a quote opens a quoted
/// scalar and, outside flow collections, a bracket a flow collection.
/// `last` is the previous significant byte (`\n` for a line's start in
/// block context). Generous where YAML allows a node: after `[`, `{`,
/// `,`, after `:`, `-` and `?` indicators, and after an anchor or tag.
fn node_start(b: &[u8], last: u8, last_token_start: usize, i: usize, in_flow: bool) -> bool {
    let spaced = i > 0 && matches!(b[i - 1], b' ' | b'\t' | b'\n');
    match last {
        b'\n' => true,
        b'[' | b'{' | b',' if in_flow => true,
        // In a flow collection `:` may touch its value after a quoted key
        // or a collection (`{"a":"b"}`); after a plain one it is text.
        b':' if in_flow && !spaced => {
            i >= 2 && b[i - 1] == b':' && matches!(b[i - 2], b'\'' | b'"' | b']' | b'}')
        }
        b':' | b'-' | b'?' => spaced,
        _ => {
            // An anchor (`&a`) or tag (`!t`, `!!str`) before whitespace.
            spaced && matches!(b.get(last_token_start), Some(b'&' | b'!'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_error(text: &str) -> bool {
        check(text).is_err_and(|e| e.message.contains("nested"))
    }

    #[test]
    fn deep_flow_nesting_is_refused_with_where() {
        let text = format!("a: 1\n---\nspec:\n  hosts: {}\n", "[".repeat(60_000));
        let e = check(&text).expect_err("refused");
        assert_eq!(e.document, 2);
        assert_eq!(e.at, Some((4, 10 + MAX_FLOW_DEPTH)));
        assert!(!depth_error(&format!(
            "a: {}{}\n",
            "[".repeat(MAX_FLOW_DEPTH),
            "]".repeat(MAX_FLOW_DEPTH)
        )));
        assert!(depth_error(&format!(
            "a: {}\n",
            "{a: ".repeat(MAX_FLOW_DEPTH + 1)
        )));
        // Over lines, after anchors and tags, after a sequence entry.
        assert!(depth_error(&format!(
            "a:\n- &x !!seq\n  {}",
            "[\n".repeat(MAX_FLOW_DEPTH + 1)
        )));
    }

    #[test]
    fn brackets_that_are_text_do_not_count() {
        let many = MAX_FLOW_DEPTH + 1;
        for text in [
            // Plain scalars in block context, quoted scalars, comments.
            format!("a: echo {}\n", "[".repeat(many)),
            format!("a: '{}'\n", "[".repeat(many)),
            format!("a: \"{}\\\"{}\"\n", "[".repeat(many), "{".repeat(many)),
            format!("a: 1 # {}\n", "[".repeat(many)),
            format!("a: [\"{}\", '{}', x]\n", "[".repeat(many), "{".repeat(many)),
            // A block scalar's lines.
            format!("a: |-\n  {}\n  'open\nb: 1\n", "[".repeat(many)),
            format!("- >\n   {}\n", "{".repeat(many)),
            // A shell test in every one of many documents.
            "args: [\"-c\", \"[ -f /x ] && run\"]\n---\n".repeat(200),
        ] {
            assert_eq!(check(&text), Ok(()), "{text}");
        }
    }

    #[test]
    fn quotes_inside_plain_scalars_do_not_hide_brackets() {
        // `it's` is text: the bracket after it still opens.
        let text = format!("a: [it's, {}\n", "[".repeat(MAX_FLOW_DEPTH));
        assert!(depth_error(&text));
        let text = format!("a: it's\nb: {}\n", "[".repeat(MAX_FLOW_DEPTH + 1));
        assert!(depth_error(&text));
        // A block scalar's quote does not run on past it.
        let text = format!("a: |\n  'x\nb: {}\n", "[".repeat(MAX_FLOW_DEPTH + 1));
        assert!(depth_error(&text));
    }

    #[test]
    fn sizes_and_documents() {
        let big = "#".repeat(MAX_FILE_BYTES + 1);
        assert!(check(&big).is_err_and(|e| e.message.contains("KiB")));
        let docs = "a: 1\n---\n".repeat(MAX_DOCUMENTS);
        let e = check(&docs).expect_err("too many documents");
        assert_eq!(e.document, MAX_DOCUMENTS + 1);
        assert_eq!(check(&"a: 1\n---\n".repeat(MAX_DOCUMENTS - 1)), Ok(()));
    }

    #[test]
    fn sixty_thousand_brackets_in_well_under_50_ms() {
        let text = format!("spec:\n  hosts: {}\n", "[".repeat(60_000));
        let t = std::time::Instant::now();
        assert!(check(&text).is_err());
        // A bound far above what it takes, far below the parser's seconds.
        assert!(
            t.elapsed() < std::time::Duration::from_millis(50),
            "{:?}",
            t.elapsed()
        );
    }
}
