//! Run totals ([`Stats`]), the header embed and the completion summary.

use std::collections::{BTreeMap, BTreeSet};

use discord::embed::Embed;
use serde::{Deserialize, Serialize};

use super::cost::CostTable;
use super::text::{self, duration, thousands, EmbedBuilder};
use super::tool::COLOR_RUN;
use super::RunInfo;
use crate::transcript::{Event, EventKind, Notice, Source, TitleSource, Usage};

/// The model name the CLI gives its own error rows; never priced or counted.
pub const SYNTHETIC_MODEL: &str = "<synthetic>";

/// Running totals for the completion summary; persisted in the checkpoint (so a
/// restarted watcher still reports the whole session). Every field defaults, so a
/// checkpoint written by an older version still loads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Session token totals (sum of the decoder's per-response deltas).
    pub usage: Usage,
    /// Estimated USD cost; `None` while any model used is not in the price table.
    pub cost_usd: Option<f64>,
    /// Cost of the priced models alone (what `watcher_session_cost_usd` can show
    /// even when `cost_usd` is unknown).
    pub priced_cost_usd: f64,
    /// Token totals per model id, as written in the transcript.
    pub usage_by_model: BTreeMap<String, Usage>,
    /// Models with tokens but no price.
    pub unpriced_models: BTreeSet<String>,
    /// The main agent's model: the first one seen.
    pub model: Option<String>,
    /// Tool calls by tool name.
    pub tools: BTreeMap<String, u64>,
    /// Tool results with `is_error`.
    pub tool_errors: u64,
    /// API error notices (synthetic error rows, `system` `api_error`).
    pub api_errors: u64,
    /// Events seen, of any kind.
    pub events: u64,
    /// Human prompts (teammate messages are not prompts).
    pub prompts: u64,
    /// Messages from other agents of an agent team.
    pub teammate_messages: u64,
    /// Assistant text blocks.
    pub assistant_messages: u64,
    /// Thinking blocks (rendered or not).
    pub thinking_blocks: u64,
    /// Tool results.
    pub tool_results: u64,
    /// Notices of every kind (errors, interruptions, compactions, commands).
    pub notices: u64,
    pub interruptions: u64,
    pub compactions: u64,
    /// Embeds rendered (header and summary excluded).
    pub embeds: u64,
    /// Distinct subagents seen (by id, else description).
    pub subagents: BTreeSet<String>,
    /// Earliest and latest event timestamp (as written; compared as times,
    /// since transcript timestamps are not monotonic).
    pub first_timestamp: Option<String>,
    pub last_timestamp: Option<String>,
    /// Run title and where it came from (`custom-title` > `ai-title` > `summary`).
    pub title: Option<String>,
    pub title_source: Option<TitleSource>,
    /// From the main session's `SessionMeta`.
    pub session_id: Option<String>,
    pub cwd: Option<String>,
    pub git_branch: Option<String>,
    pub cli_version: Option<String>,
}

impl Stats {
    /// All errors: failed tool calls and API errors.
    pub fn errors(&self) -> u64 {
        self.tool_errors + self.api_errors
    }

    /// Tool calls of every tool.
    pub fn tool_calls(&self) -> u64 {
        self.tools.values().sum()
    }

    /// Seconds from the first to the last event, else from the first event to
    /// `ended` (when the transcript gave only one time).
    pub fn duration_secs(&self, ended: Option<&str>) -> Option<u64> {
        let first = text::parse_time(self.first_timestamp.as_deref()?)?;
        let last = self
            .last_timestamp
            .as_deref()
            .and_then(text::parse_time)
            .filter(|l| *l > first)
            .or_else(|| ended.and_then(text::parse_time))?;
        last.duration_since(first).ok().map(|d| d.as_secs())
    }

    /// Counts `ev` (and prices its usage).
    pub(crate) fn observe(&mut self, ev: &Event, costs: &CostTable) {
        self.events += 1;
        if let Some(ts) = ev.timestamp.as_deref() {
            self.observe_time(ts);
        }
        if let Source::Subagent {
            agent_id,
            description,
            ..
        } = &ev.source
        {
            if let Some(key) = agent_id.as_ref().or(description.as_ref()) {
                self.subagents.insert(key.clone());
            }
        }
        let main = ev.source == Source::Main;
        match &ev.kind {
            EventKind::SessionMeta {
                session_id,
                cwd,
                version,
                git_branch,
            } if main => {
                self.session_id = Some(session_id.clone());
                self.cwd = cwd.clone().or(self.cwd.take());
                self.cli_version = version.clone().or(self.cli_version.take());
                self.git_branch = git_branch.clone().or(self.git_branch.take());
            }
            EventKind::SessionMeta { .. } => {}
            EventKind::UserPrompt { .. } => self.prompts += 1,
            EventKind::TeammateMessage { .. } => self.teammate_messages += 1,
            EventKind::AssistantText { model, .. } => {
                self.assistant_messages += 1;
                if main {
                    self.note_model(model.as_deref());
                }
            }
            EventKind::Thinking { .. } => self.thinking_blocks += 1,
            EventKind::ToolUse { name, .. } => *self.tools.entry(name.clone()).or_default() += 1,
            EventKind::ToolResult { is_error, .. } => {
                self.tool_results += 1;
                if *is_error {
                    self.tool_errors += 1;
                }
            }
            EventKind::Notice { notice, .. } => {
                self.notices += 1;
                match notice {
                    Notice::ApiError => self.api_errors += 1,
                    Notice::Interrupted => self.interruptions += 1,
                    Notice::CompactBoundary => self.compactions += 1,
                    _ => {}
                }
            }
            EventKind::Usage { model, usage, .. } => {
                if model != SYNTHETIC_MODEL && !usage.is_zero() {
                    self.usage = self.usage.add(*usage);
                    let m = self.usage_by_model.entry(model.clone()).or_default();
                    *m = m.add(*usage);
                    if main {
                        self.note_model(Some(model));
                    }
                    self.reprice(costs);
                }
            }
            EventKind::Title { title, source } => {
                if self.title_source.is_none_or(|s| *source >= s) && !title.trim().is_empty() {
                    self.title = Some(title.clone());
                    self.title_source = Some(*source);
                }
            }
        }
    }

    fn note_model(&mut self, model: Option<&str>) {
        if let Some(m) = model.filter(|m| !m.is_empty() && *m != SYNTHETIC_MODEL) {
            self.model.get_or_insert_with(|| m.to_owned());
        }
    }

    fn observe_time(&mut self, ts: &str) {
        let Some(t) = text::parse_time(ts) else {
            return;
        };
        let earlier = |other: &Option<String>| {
            other
                .as_deref()
                .and_then(text::parse_time)
                .is_none_or(|o| t < o)
        };
        let later = |other: &Option<String>| {
            other
                .as_deref()
                .and_then(text::parse_time)
                .is_none_or(|o| t > o)
        };
        if earlier(&self.first_timestamp) {
            self.first_timestamp = Some(ts.to_owned());
        }
        if later(&self.last_timestamp) {
            self.last_timestamp = Some(ts.to_owned());
        }
    }

    /// Recomputes the cost from the per-model totals (also after a restore, so a
    /// changed `MODEL_COSTS` applies to the whole session).
    pub(crate) fn reprice(&mut self, costs: &CostTable) {
        let mut priced = 0.0;
        self.unpriced_models.clear();
        for (model, usage) in &self.usage_by_model {
            match costs.cost(model, usage) {
                Some(c) => priced += c,
                None if usage.is_zero() => {}
                None => {
                    self.unpriced_models.insert(model.clone());
                }
            }
        }
        self.priced_cost_usd = priced;
        self.cost_usd = self.unpriced_models.is_empty().then_some(priced);
    }
}

fn usd(x: f64) -> String {
    if x > 0.0 && x < 1.0 {
        format!("${x:.4}")
    } else {
        format!("${x:.2}")
    }
}

fn count(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

/// `in 1,234 · out 56 · cache write 7 · cache read 8,900`
pub fn tokens_line(u: &Usage) -> String {
    format!(
        "in {} · out {} · cache write {} · cache read {}",
        thousands(u.input_tokens),
        thousands(u.output_tokens),
        thousands(u.cache_creation_input_tokens),
        thousands(u.cache_read_input_tokens)
    )
}

/// `$1.23`, or `unknown (no price for: x, y; priced part $0.50)`.
pub fn cost_line(stats: &Stats) -> String {
    match stats.cost_usd {
        Some(c) => usd(c),
        None => {
            let models: Vec<&str> = stats.unpriced_models.iter().map(String::as_str).collect();
            if stats.priced_cost_usd > 0.0 {
                format!(
                    "unknown (no price for: {}; priced part {})",
                    models.join(", "),
                    usd(stats.priced_cost_usd)
                )
            } else if models.is_empty() {
                // No response carried usage: nothing was spent.
                format!("{} (no usage recorded)", usd(0.0))
            } else {
                format!("unknown (no price for: {})", models.join(", "))
            }
        }
    }
}

/// `Bash ×3 · Read ×2`, most used first.
pub fn tools_line(stats: &Stats) -> String {
    let mut tools: Vec<(&String, &u64)> = stats.tools.iter().collect();
    tools.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    tools
        .iter()
        .map(|(n, c)| format!("{n} ×{c}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

fn run_footer(run: &RunInfo) -> String {
    [
        run.task_id.as_deref().map(|t| format!("task {t}")),
        run.attempt.as_deref().map(|a| format!("attempt {a}")),
        run.run_id
            .as_deref()
            .or(run.short_id.as_deref())
            .map(|r| format!("run {r}")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" · ")
}

/// The first embed of a run: who, what, where, when.
pub fn header(run: &RunInfo, stats: &Stats, started: &str) -> Embed {
    let title = match run.task_id.as_deref() {
        Some(task) => format!("🚀 Run started: {task}"),
        None => "🚀 Run started".to_owned(),
    };
    let mut b = EmbedBuilder::new(&title, COLOR_RUN).timestamp(Some(started));
    let run_id = match (run.run_id.as_deref(), run.short_id.as_deref()) {
        (Some(r), Some(s)) if r != s => Some(format!("{r} ({s})")),
        (Some(r), _) => Some(r.to_owned()),
        (None, s) => s.map(str::to_owned),
    };
    let fields = [
        ("Task", run.task_id.clone()),
        ("Attempt", run.attempt.clone()),
        ("Run", run_id),
        ("Model", stats.model.clone()),
        ("Started", Some(started.to_owned())),
        ("Session", stats.session_id.clone()),
        ("Branch", stats.git_branch.clone()),
        ("Directory", stats.cwd.clone()),
    ];
    for (name, value) in fields {
        if let Some(v) = value.filter(|v| !v.trim().is_empty()) {
            b = b.field(name, &text::inline_code(&v, 200).0, true, 256);
        }
    }
    let description = stats
        .title
        .as_deref()
        .map(|t| format!("**{}**", text::one_line(t)))
        .unwrap_or_default();
    b.description(&description, 500).build().0
}

/// The last embed of a run: duration, tokens, cost, tools, errors, counts.
pub fn summary(run: &RunInfo, stats: &Stats, ended: &str) -> Embed {
    let errors = stats.errors();
    let title = if errors == 0 {
        "🏁 Run complete".to_owned()
    } else {
        format!(
            "🏁 Run complete · {errors} error{}",
            if errors == 1 { "" } else { "s" }
        )
    };
    let took = stats
        .duration_secs(Some(ended))
        .map_or_else(|| "unknown".to_owned(), duration);
    let tools = if stats.tools.is_empty() {
        "none".to_owned()
    } else {
        format!("{} — {}", thousands(stats.tool_calls()), tools_line(stats))
    };
    let mut activity = vec![count(stats.prompts, "prompt", "prompts")];
    // Agent teams only: other runs keep the line they always had.
    if stats.teammate_messages > 0 {
        activity.push(count(
            stats.teammate_messages,
            "teammate message",
            "teammate messages",
        ));
    }
    activity.extend([
        count(stats.assistant_messages, "reply", "replies"),
        count(stats.tool_results, "tool result", "tool results"),
        count(stats.notices, "notice", "notices"),
        count(stats.events, "event", "events"),
    ]);
    let activity = activity.join(" · ");
    let mut b = EmbedBuilder::new(&title, COLOR_RUN)
        .timestamp(Some(ended))
        .field("Duration", &took, true, 64)
        .field("Cost", &cost_line(stats), true, 512)
        .field(
            "Errors",
            &format!("{} tool · {} API", stats.tool_errors, stats.api_errors),
            true,
            64,
        )
        .field("Tokens", &tokens_line(&stats.usage), false, 256)
        .field("Tool calls", &tools, false, 1024)
        .field("Activity", &activity, false, 256);
    if stats.usage_by_model.len() > 1 {
        let models = stats
            .usage_by_model
            .iter()
            .map(|(m, u)| format!("{m}: {}", tokens_line(u)))
            .collect::<Vec<_>>()
            .join("\n");
        b = b.field("Models", &models, false, 1024);
    }
    if !stats.subagents.is_empty() {
        b = b.field("Subagents", &stats.subagents.len().to_string(), true, 32);
    }
    if stats.compactions > 0 || stats.interruptions > 0 {
        b = b.field(
            "Compactions · interruptions",
            &format!("{} · {}", stats.compactions, stats.interruptions),
            true,
            64,
        );
    }
    let description = stats
        .title
        .as_deref()
        .map(|t| format!("**{}**", text::one_line(t)))
        .unwrap_or_default();
    b.footer(&run_footer(run), 256)
        .description(&description, 500)
        .build()
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind) -> Event {
        Event {
            source: Source::Main,
            uuid: None,
            timestamp: None,
            kind,
        }
    }

    fn usage_ev(model: &str, input: u64, output: u64) -> Event {
        ev(EventKind::Usage {
            message_id: "m".into(),
            model: model.into(),
            usage: Usage {
                input_tokens: input,
                output_tokens: output,
                ..Usage::default()
            },
        })
    }

    #[test]
    fn usage_is_summed_and_priced_per_model() {
        let costs = CostTable::builtin();
        let mut s = Stats::default();
        s.observe(
            &usage_ev("claude-sonnet-4-5-20250929", 1_000_000, 0),
            &costs,
        );
        s.observe(
            &usage_ev("claude-sonnet-4-5-20250929", 0, 1_000_000),
            &costs,
        );
        s.observe(&usage_ev("claude-haiku-4-5", 1_000_000, 0), &costs);
        assert_eq!(s.usage.input_tokens, 2_000_000);
        assert_eq!(s.usage.output_tokens, 1_000_000);
        assert_eq!(s.cost_usd.map(|c| (c * 100.0).round()), Some(1900.0));
        assert_eq!(s.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    }

    #[test]
    fn an_unpriced_model_makes_the_cost_unknown_not_zero() {
        let costs = CostTable::builtin();
        let mut s = Stats::default();
        s.observe(&usage_ev("claude-sonnet-4-5", 1_000_000, 0), &costs);
        s.observe(&usage_ev("mystery-model", 10, 10), &costs);
        s.observe(&usage_ev(SYNTHETIC_MODEL, 0, 0), &costs);
        assert_eq!(s.cost_usd, None);
        assert_eq!(s.priced_cost_usd, 3.0);
        assert_eq!(
            cost_line(&s),
            "unknown (no price for: mystery-model; priced part $3.00)"
        );
        s.reprice(&CostTable::from_json(r#"{"mystery-model": [0, 0]}"#).unwrap_or_default());
        assert_eq!(s.cost_usd, Some(3.0));
    }

    #[test]
    fn titles_follow_their_priority() {
        let costs = CostTable::builtin();
        let mut s = Stats::default();
        let title = |t: &str, source| {
            ev(EventKind::Title {
                title: t.into(),
                source,
            })
        };
        s.observe(&title("ai", TitleSource::AiTitle), &costs);
        s.observe(&title("summary", TitleSource::Summary), &costs);
        assert_eq!(s.title.as_deref(), Some("ai"));
        s.observe(&title("custom", TitleSource::CustomTitle), &costs);
        s.observe(&title("ai 2", TitleSource::AiTitle), &costs);
        assert_eq!(s.title.as_deref(), Some("custom"));
    }

    #[test]
    fn duration_uses_the_earliest_and_latest_times() {
        let costs = CostTable::builtin();
        let mut s = Stats::default();
        for ts in [
            "2025-01-01T12:00:10.000Z",
            "2025-01-01T12:00:00.000Z",
            "2025-01-01T12:02:00.000Z",
        ] {
            let mut e = ev(EventKind::UserPrompt {
                text: "x".into(),
                images: 0,
            });
            e.timestamp = Some(ts.into());
            s.observe(&e, &costs);
        }
        assert_eq!(s.duration_secs(None), Some(120));
        let mut one = Stats {
            first_timestamp: Some("2025-01-01T12:00:00Z".into()),
            last_timestamp: Some("2025-01-01T12:00:00Z".into()),
            ..Stats::default()
        };
        assert_eq!(one.duration_secs(Some("2025-01-01T12:00:30Z")), Some(30));
        one.first_timestamp = None;
        assert_eq!(one.duration_secs(Some("2025-01-01T12:00:30Z")), None);
    }

    #[test]
    fn stats_survive_a_checkpoint_round_trip_and_old_checkpoints_load() {
        let mut s = Stats::default();
        s.observe(&usage_ev("claude-opus-4-1", 5, 6), &CostTable::builtin());
        let json = serde_json::to_value(&s).unwrap_or_default();
        let back: Stats = serde_json::from_value(json).unwrap_or_default();
        assert_eq!(back, s);
        let old: Stats = serde_json::from_str(
            r#"{"usage":{"input_tokens":1,"output_tokens":2,"cache_creation_input_tokens":0,"cache_read_input_tokens":0},"cost_usd":null}"#,
        )
        .unwrap_or_default();
        assert_eq!(old.usage.output_tokens, 2);
    }
}
