//! `MODEL_COSTS`: what a session's tokens cost, by model.
//!
//! Prices are USD per million tokens for (input, output, cache write, cache read).
//! A model id is priced by its *family*: `claude-sonnet-4-5-20250929`,
//! `us.anthropic.claude-sonnet-4-5-20250929-v1:0`, `claude-sonnet-4-5@20250929` and
//! `claude-sonnet-4.5` are all `claude-sonnet-4-5`. A plain prefix match is not used
//! on purpose: `claude-opus-4-5` starts with `claude-opus-4` but is priced
//! differently, and a wrong price is worse than an unknown one. A model that is not
//! in the table has no price: the session cost is then unknown (`None`), never 0.
//!
//! `MODEL_COSTS` extends and overrides the built-in table. It is a JSON object from
//! a model id (or family) to a price, either `[input, output, cacheWrite,
//! cacheRead]`, `[input, output]` (cache prices then follow Anthropic's usual
//! multipliers: write 1.25 × input, read 0.1 × input) or an object
//! `{"input": 3, "output": 15, "cacheWrite": 3.75, "cacheRead": 0.3}` (cache keys
//! optional, also spelt `cache_write` / `cache_read`). A key ending in `*` is an
//! explicit prefix (`"my-model-*"`); the longest matching prefix wins. Entries from
//! `MODEL_COSTS` win over built-in ones.

use serde_json::Value;

use super::RenderError;
use crate::transcript::Usage;

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cache_write: f64,
    pub cache_read: f64,
}

impl Price {
    const fn new(input: f64, output: f64, cache_write: f64, cache_read: f64) -> Price {
        Price {
            input,
            output,
            cache_write,
            cache_read,
        }
    }

    /// What `usage` costs at this price, in USD.
    pub fn cost(&self, usage: &Usage) -> f64 {
        (usage.input_tokens as f64 * self.input
            + usage.output_tokens as f64 * self.output
            + usage.cache_creation_input_tokens as f64 * self.cache_write
            + usage.cache_read_input_tokens as f64 * self.cache_read)
            / 1_000_000.0
    }
}

/// Claude models and their Anthropic list prices (USD per million tokens:
/// input, output, 5-minute cache write at 1.25× input, cache read at 0.1×), as
/// published on platform.claude.com. Anything else is priced through
/// `MODEL_COSTS`, or shown as unknown, never as 0.
const BUILTIN: [(&str, Price); 13] = [
    ("claude-opus-5-5", Price::new(4.0, 20.0, 5.0, 0.4)),
    ("claude-opus-5", Price::new(5.0, 25.0, 6.25, 0.5)),
    ("claude-sonnet-5-5", Price::new(2.0, 10.0, 2.5, 0.2)),
    ("claude-opus-4-6", Price::new(5.0, 25.0, 6.25, 0.5)),
    ("claude-sonnet-4-6", Price::new(3.0, 15.0, 3.75, 0.3)),
    ("claude-opus-4-5", Price::new(5.0, 25.0, 6.25, 0.5)),
    ("claude-opus-4-1", Price::new(15.0, 75.0, 18.75, 1.5)),
    ("claude-opus-4", Price::new(15.0, 75.0, 18.75, 1.5)),
    ("claude-sonnet-4-5", Price::new(3.0, 15.0, 3.75, 0.3)),
    ("claude-sonnet-4", Price::new(3.0, 15.0, 3.75, 0.3)),
    ("claude-3-7-sonnet", Price::new(3.0, 15.0, 3.75, 0.3)),
    ("claude-haiku-4-5", Price::new(1.0, 5.0, 1.25, 0.1)),
    ("claude-3-5-haiku", Price::new(0.8, 4.0, 1.0, 0.08)),
];

#[derive(Debug, Clone, PartialEq)]
enum Pattern {
    /// Matches an id with the same family (see [`family`]), or exactly this id.
    Model { id: String, family: String },
    /// `key*`: any id starting with `key`.
    Prefix(String),
}

/// USD per million tokens by model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CostTable {
    /// Most specific source first: `MODEL_COSTS` entries, then the built-in ones.
    entries: Vec<(Pattern, Price)>,
}

impl CostTable {
    /// The built-in table of current Claude models.
    pub fn builtin() -> CostTable {
        CostTable {
            entries: BUILTIN.iter().map(|(k, p)| (pattern(k), *p)).collect(),
        }
    }

    /// The built-in table, extended and overridden by a `MODEL_COSTS` JSON object.
    pub fn from_json(s: &str) -> Result<CostTable, RenderError> {
        let value: Value = serde_json::from_str(s).map_err(|e| RenderError::Json(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(RenderError::Invalid(
                "expected a JSON object from model id to price".into(),
            ));
        };
        let mut entries = Vec::with_capacity(map.len() + BUILTIN.len());
        for (key, v) in &map {
            if key.trim().is_empty() || key.trim() == "*" {
                return Err(RenderError::key(key, "a model id must not be empty"));
            }
            entries.push((pattern(key), price(key, v)?));
        }
        entries.extend(CostTable::builtin().entries);
        Ok(CostTable { entries })
    }

    /// The price of `model`, when the table knows it.
    pub fn price(&self, model: &str) -> Option<Price> {
        let fam = family(model);
        let find = |matches: &dyn Fn(&str, &str) -> bool| {
            self.entries.iter().find_map(|(p, price)| match p {
                Pattern::Model { id, family } if matches(id, family) => Some(*price),
                _ => None,
            })
        };
        let by_prefix = || {
            self.entries
                .iter()
                .filter_map(|(p, price)| match p {
                    Pattern::Prefix(k) if model.starts_with(k.as_str()) => Some((k.len(), *price)),
                    _ => None,
                })
                .max_by_key(|(len, _)| *len)
                .map(|(_, price)| price)
        };
        find(&|id, _| id == model)
            .or_else(|| find(&|_, f| f == fam))
            .or_else(by_prefix)
    }

    /// The cost of `usage` on `model`; `None` when the model has no price.
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        self.price(model).map(|p| p.cost(usage))
    }
}

fn pattern(key: &str) -> Pattern {
    match key.strip_suffix('*') {
        Some(prefix) => Pattern::Prefix(prefix.to_owned()),
        None => Pattern::Model {
            id: key.to_owned(),
            family: family(key),
        },
    }
}

/// The model family of an id: lower case, without a cloud-provider prefix
/// (`us.anthropic.`), a snapshot date (`-20250929`, `@20250929`), a Bedrock version
/// (`-v1:0`), `-latest` or a context-size tag (`[1m]`); dots become dashes.
pub fn family(id: &str) -> String {
    let mut s = id.trim().to_lowercase();
    if let Some(i) = s.find("claude") {
        s.drain(..i);
    }
    if let Some(i) = s.find('[') {
        s.truncate(i);
    }
    if let Some(i) = s.find('@') {
        s.truncate(i);
    }
    let mut s = s.replace('.', "-");
    loop {
        let before = s.len();
        if let Some(i) = s.rfind("-v") {
            let rest = &s[i + 2..];
            if !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit() || c == ':') {
                s.truncate(i);
            }
        }
        if let Some(stripped) = s.strip_suffix("-latest") {
            s = stripped.to_owned();
        }
        if let Some(i) = s.rfind('-') {
            let rest = &s[i + 1..];
            if rest.len() == 8 && rest.chars().all(|c| c.is_ascii_digit()) {
                s.truncate(i);
            }
        }
        if s.len() == before {
            return s;
        }
    }
}

fn price(key: &str, v: &Value) -> Result<Price, RenderError> {
    let num = |what: &str, v: &Value| -> Result<f64, RenderError> {
        match v.as_f64() {
            Some(n) if n.is_finite() && n >= 0.0 => Ok(n),
            _ => Err(RenderError::key(
                &format!("{key}.{what}"),
                format!("expected a non-negative number of USD per million tokens, got {v}"),
            )),
        }
    };
    let with_defaults = |input: f64, output: f64, cw: Option<f64>, cr: Option<f64>| Price {
        input,
        output,
        cache_write: cw.unwrap_or(input * 1.25),
        cache_read: cr.unwrap_or(input * 0.1),
    };
    match v {
        Value::Array(a) if a.len() == 2 || a.len() == 4 => {
            let names = ["input", "output", "cacheWrite", "cacheRead"];
            let mut n = [0.0; 4];
            for (i, x) in a.iter().enumerate() {
                n[i] = num(names[i], x)?;
            }
            Ok(if a.len() == 4 {
                Price::new(n[0], n[1], n[2], n[3])
            } else {
                with_defaults(n[0], n[1], None, None)
            })
        }
        Value::Object(o) => {
            let mut input = None;
            let mut output = None;
            let mut cw = None;
            let mut cr = None;
            for (k, x) in o {
                let slot = match k.as_str() {
                    "input" => &mut input,
                    "output" => &mut output,
                    "cacheWrite" | "cache_write" => &mut cw,
                    "cacheRead" | "cache_read" => &mut cr,
                    _ => {
                        return Err(RenderError::key(
                            &format!("{key}.{k}"),
                            "unknown price key (expected input, output, cacheWrite, cacheRead)",
                        ))
                    }
                };
                *slot = Some(num(k, x)?);
            }
            match (input, output) {
                (Some(i), Some(o)) => Ok(with_defaults(i, o, cw, cr)),
                _ => Err(RenderError::key(key, "a price needs both input and output")),
            }
        }
        _ => Err(RenderError::key(
            key,
            "expected [input, output, cacheWrite, cacheRead] or {\"input\":…, \"output\":…}",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(i: u64, o: u64, cw: u64, cr: u64) -> Usage {
        Usage {
            input_tokens: i,
            output_tokens: o,
            cache_creation_input_tokens: cw,
            cache_read_input_tokens: cr,
        }
    }

    #[test]
    fn families_ignore_dates_providers_and_versions() {
        for id in [
            "claude-sonnet-4-5-20250929",
            "claude-sonnet-4-5",
            "Claude-Sonnet-4.5",
            "claude-sonnet-4-5@20250929",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "claude-sonnet-4-5-20250929[1m]",
            "claude-sonnet-4-5-latest",
        ] {
            assert_eq!(family(id), "claude-sonnet-4-5", "{id}");
        }
        assert_eq!(family("claude-opus-4-5-20251101"), "claude-opus-4-5");
        assert_eq!(family("claude-3-5-haiku-20241022"), "claude-3-5-haiku");
    }

    #[test]
    fn builtin_prices_current_models() {
        let t = CostTable::builtin();
        let p = |m: &str| {
            t.price(m)
                .map(|p| (p.input, p.output, p.cache_write, p.cache_read))
        };
        assert_eq!(
            p("claude-opus-4-1-20250805"),
            Some((15.0, 75.0, 18.75, 1.5))
        );
        assert_eq!(p("claude-opus-4-20250514"), Some((15.0, 75.0, 18.75, 1.5)));
        assert_eq!(p("claude-opus-4-6"), Some((5.0, 25.0, 6.25, 0.5)));
        assert_eq!(p("claude-opus-4-5-20251101"), Some((5.0, 25.0, 6.25, 0.5)));
        assert_eq!(p("claude-opus-5"), Some((5.0, 25.0, 6.25, 0.5)));
        assert_eq!(p("claude-opus-5-5"), Some((4.0, 20.0, 5.0, 0.4)));
        assert_eq!(p("claude-sonnet-5-5"), Some((2.0, 10.0, 2.5, 0.2)));
        assert_eq!(p("claude-sonnet-4-6"), Some((3.0, 15.0, 3.75, 0.3)));
        assert_eq!(
            p("claude-sonnet-4-5-20250929"),
            Some((3.0, 15.0, 3.75, 0.3))
        );
        assert_eq!(p("claude-sonnet-4-20250514"), Some((3.0, 15.0, 3.75, 0.3)));
        assert_eq!(
            p("claude-3-7-sonnet-20250219"),
            Some((3.0, 15.0, 3.75, 0.3))
        );
        assert_eq!(p("claude-haiku-4-5-20251001"), Some((1.0, 5.0, 1.25, 0.1)));
        assert_eq!(p("claude-3-5-haiku-20241022"), Some((0.8, 4.0, 1.0, 0.08)));
    }

    #[test]
    fn unknown_models_have_no_price_not_zero() {
        let t = CostTable::builtin();
        assert_eq!(
            t.price("claude-opus-4-9-20270101"),
            None,
            "not a prefix match of claude-opus-4"
        );
        assert_eq!(t.price("gpt-4o"), None);
        assert_eq!(t.price("<synthetic>"), None);
        assert_eq!(t.cost("mystery", &usage(1, 1, 1, 1)), None);
    }

    #[test]
    fn cost_is_per_million_tokens_for_each_kind() {
        let t = CostTable::builtin();
        let c = t
            .cost(
                "claude-sonnet-4-5",
                &usage(1_000_000, 1_000_000, 1_000_000, 1_000_000),
            )
            .unwrap_or_default();
        assert!((c - (3.0 + 15.0 + 3.75 + 0.3)).abs() < 1e-9, "{c}");
    }

    #[test]
    fn model_costs_extend_and_override() {
        let t = CostTable::from_json(
            r#"{"claude-sonnet-4-5": [1, 2, 3, 4], "my-model": [2, 10],
                "local-*": {"input": 0, "output": 0}, "claude-opus-4-5": {"input": 5, "output": 25, "cacheRead": 0.5}}"#,
        )
        .unwrap_or_default();
        assert_eq!(
            t.price("claude-sonnet-4-5-20250929"),
            Some(Price::new(1.0, 2.0, 3.0, 4.0))
        );
        assert_eq!(t.price("my-model"), Some(Price::new(2.0, 10.0, 2.5, 0.2)));
        assert_eq!(
            t.price("local-llama-70b"),
            Some(Price::new(0.0, 0.0, 0.0, 0.0))
        );
        assert_eq!(
            t.price("claude-opus-4-5-20251101"),
            Some(Price::new(5.0, 25.0, 6.25, 0.5))
        );
        assert!(t.price("claude-haiku-4-5").is_some(), "built-ins kept");
    }

    #[test]
    fn bad_model_costs_name_the_key() {
        let err = |s: &str| {
            CostTable::from_json(s)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(err("{").contains("JSON"), "{}", err("{"));
        assert!(err("[]").contains("object"));
        assert!(
            err(r#"{"m": [1, -2]}"#).contains("m.output"),
            "{}",
            err(r#"{"m": [1, -2]}"#)
        );
        assert!(err(r#"{"m": {"input": 1}}"#).contains("`m`"));
        assert!(err(r#"{"m": {"input": 1, "output": 1, "x": 1}}"#).contains("m.x"));
        assert!(err(r#"{"m": "cheap"}"#).contains("`m`"));
        assert!(err(r#"{"m": [1, 2, 3]}"#).contains("`m`"));
    }
}
