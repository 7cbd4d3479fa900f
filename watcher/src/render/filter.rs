//! `FILTERS`: which tool events are posted when `PARITY_MODE` is off.
//!
//! JSON object, every key optional:
//!
//! - `includeTools`: tool names to post. A name containing `*` or `?` is a glob
//!   (`"mcp__github__*"`), anything else must equal the tool name (case-sensitive).
//! - `includePatterns`: a tool call is also posted when one of the top-level string
//!   arguments of its input (`command`, `file_path`, `pattern`, `url`, …) matches.
//!   A pattern containing `*` (any run of chars, `/` included) or `?` (one char) is
//!   a glob over the whole argument (`"*.rs"`, `"cargo *"`); any other pattern is a
//!   plain substring (`"migrations/"`). No regular expressions.
//! - `minStdoutLength`: successful tool output shorter than this many chars
//!   (after sanitising and trimming) is not posted; the call itself still is.
//!
//! When neither list is given every tool is posted. When one or both are given, a
//! tool call is posted if its name is included **or** an argument matches a
//! pattern; its result follows the call's fate. Errors are never hidden by
//! `minStdoutLength`. Non-tool events (text, prompts, notices) are not filtered.

use serde_json::Value;

use super::RenderError;

/// Matched arguments are cut to this many chars, so a pathological glob over a huge
/// argument stays cheap.
const MAX_SUBJECT_CHARS: usize = 16 * 1024;

/// `FILTERS`: which tool events to post.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// `includeTools`: names or globs of tools to post.
    pub include_tools: Vec<String>,
    /// `includePatterns`: substrings or globs matched against tool arguments.
    pub include_patterns: Vec<String>,
    /// `minStdoutLength`: shorter successful output is not posted.
    pub min_stdout_length: usize,
}

impl Filters {
    /// Parses `FILTERS`; errors name the offending key.
    pub fn from_json(s: &str) -> Result<Filters, RenderError> {
        let value: Value = serde_json::from_str(s).map_err(|e| RenderError::Json(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(RenderError::Invalid(
                "expected a JSON object {includeTools, includePatterns, minStdoutLength}".into(),
            ));
        };
        let mut f = Filters::default();
        for (key, v) in &map {
            match key.as_str() {
                "includeTools" => f.include_tools = strings(key, v)?,
                "includePatterns" => f.include_patterns = strings(key, v)?,
                "minStdoutLength" => {
                    f.min_stdout_length = match v {
                        Value::Null => 0,
                        v => v
                            .as_u64()
                            .and_then(|n| usize::try_from(n).ok())
                            .ok_or_else(|| {
                                RenderError::key(
                                    key,
                                    format!("expected a whole number ≥ 0, got {v}"),
                                )
                            })?,
                    }
                }
                _ => {
                    return Err(RenderError::key(
                        key,
                        "unknown key (expected includeTools, includePatterns, minStdoutLength)",
                    ))
                }
            }
        }
        Ok(f)
    }

    /// Whether either include list is set.
    pub fn is_active(&self) -> bool {
        !self.include_tools.is_empty() || !self.include_patterns.is_empty()
    }

    /// Whether a call of tool `name` with `input` is posted.
    pub fn allows_call(&self, name: &str, input: &Value) -> bool {
        if !self.is_active() {
            return true;
        }
        self.tool_included(name)
            || match input {
                Value::Object(o) => o
                    .values()
                    .filter_map(Value::as_str)
                    .any(|s| self.pattern_matches(s)),
                Value::String(s) => self.pattern_matches(s),
                _ => false,
            }
    }

    /// Whether a result is posted when its call was never seen (e.g. after a
    /// restart): by the tool name when known, else by the patterns over the output.
    pub fn allows_orphan_result(&self, name: Option<&str>, content: &str) -> bool {
        !self.is_active()
            || name.is_some_and(|n| self.tool_included(n))
            || self.pattern_matches(content)
    }

    /// Whether successful output of `chars` chars is long enough to post.
    pub fn output_long_enough(&self, chars: usize) -> bool {
        chars >= self.min_stdout_length
    }

    fn tool_included(&self, name: &str) -> bool {
        self.include_tools.iter().any(|t| matches(t, name))
    }

    fn pattern_matches(&self, subject: &str) -> bool {
        self.include_patterns.iter().any(|p| matches(p, subject))
    }
}

fn strings(key: &str, v: &Value) -> Result<Vec<String>, RenderError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| match x.as_str() {
                Some(s) if !s.is_empty() => Ok(s.to_owned()),
                _ => Err(RenderError::key(
                    &format!("{key}[{i}]"),
                    format!("expected a non-empty string, got {x}"),
                )),
            })
            .collect(),
        _ => Err(RenderError::key(
            key,
            format!("expected an array of strings, got {v}"),
        )),
    }
}

/// A pattern with `*`/`?` is a glob over all of `subject`; otherwise a substring.
fn matches(pattern: &str, subject: &str) -> bool {
    let subject = match subject.char_indices().nth(MAX_SUBJECT_CHARS) {
        Some((i, _)) => &subject[..i],
        None => subject,
    };
    if pattern.contains(['*', '?']) {
        glob(pattern, subject)
    } else {
        subject.contains(pattern)
    }
}

/// Wildcard match (`*` any run, `?` one char) with single-star backtracking:
/// linear for the patterns people write, O(n·m) at worst.
fn glob(pattern: &str, subject: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = subject.chars().collect();
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs_and_substrings() {
        assert!(glob("*.rs", "src/main.rs"));
        assert!(!glob("*.rs", "src/main.rsx"));
        assert!(glob("cargo *", "cargo test -p watcher"));
        assert!(glob("a?c", "abc") && !glob("a?c", "abbc"));
        assert!(glob("*", "") && glob("**a**", "xax"));
        assert!(glob("mcp__github__*", "mcp__github__create_issue"));
        assert!(matches("migrations/", "db/migrations/001.sql"));
        assert!(!matches("Cargo", "cargo test"), "case-sensitive");
    }

    #[test]
    fn parses_all_keys() {
        let f = Filters::from_json(
            r#"{"includeTools": ["Bash", "mcp__*"], "includePatterns": ["*.rs"], "minStdoutLength": 10}"#,
        )
        .unwrap_or_default();
        assert_eq!(f.include_tools, vec!["Bash", "mcp__*"]);
        assert_eq!(f.include_patterns, vec!["*.rs"]);
        assert_eq!(f.min_stdout_length, 10);
        assert_eq!(Filters::from_json("{}").ok(), Some(Filters::default()));
        assert_eq!(
            Filters::from_json(r#"{"includeTools": null}"#).ok(),
            Some(Filters::default())
        );
    }

    #[test]
    fn errors_name_the_key() {
        let err = |s: &str| {
            Filters::from_json(s)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err("{nope").contains("JSON"));
        assert!(err("[1]").contains("object"));
        assert!(err(r#"{"includeTools": "Bash"}"#).contains("`includeTools`"));
        assert!(err(r#"{"includeTools": ["Bash", 3]}"#).contains("`includeTools[1]`"));
        assert!(err(r#"{"includePatterns": [""]}"#).contains("`includePatterns[0]`"));
        assert!(err(r#"{"minStdoutLength": -1}"#).contains("`minStdoutLength`"));
        assert!(err(r#"{"minStdoutLength": 1.5}"#).contains("`minStdoutLength`"));
        assert!(err(r#"{"includetools": []}"#).contains("`includetools`: unknown key"));
    }

    #[test]
    fn calls_are_included_by_name_or_argument() {
        let f = Filters {
            include_tools: vec!["Bash".into()],
            include_patterns: vec!["*.rs".into()],
            min_stdout_length: 0,
        };
        assert!(f.allows_call("Bash", &json!({"command": "ls"})));
        assert!(f.allows_call("Edit", &json!({"file_path": "src/lib.rs"})));
        assert!(!f.allows_call("Edit", &json!({"file_path": "README.md"})));
        assert!(!f.allows_call("Read", &json!(null)));
        assert!(Filters::default().allows_call("Anything", &json!({})));
        assert!(f.allows_orphan_result(Some("Bash"), ""));
        assert!(!f.allows_orphan_result(None, "hello"));
    }
}
