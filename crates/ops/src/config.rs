//! Layered configuration: CLI flag > environment variable > config file > default.
//!
//! clap already resolves flag > env > default and tells, per argument, where its
//! value came from. A config file must slot in between env and default, which clap
//! cannot do, so [`load`] rebuilds the layers with the `config` crate: defaults
//! first, then the file, then every value the user gave explicitly. The result is
//! deserialised into the service's typed config struct, whose
//! `#[serde(deny_unknown_fields)]` turns a misspelt key in the file into an error
//! that names it. File keys are the snake_case argument names
//! (`poll_interval_ms = 100`).

use std::path::Path;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::de::DeserializeOwned;

use crate::Secret;

/// A configuration problem, phrased for the operator: which key, what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {key}: {problem}")]
    Invalid { key: String, problem: String },
    #[error("config file {path}: {problem}")]
    File { path: String, problem: String },
    #[error("invalid configuration: {0}")]
    Other(String),
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// A binary's command line that may name a `--config` file.
pub trait ConfigFileArg {
    fn config_file(&self) -> Option<&Path>;
}

/// The whole load of a binary: parses `matches` into its CLI type `C`, layers
/// flags over env, the `--config` file and defaults into the raw config `R`
/// (see [`load`]), and validates that into the runtime config. Both binaries go
/// through here, so precedence and error wording cannot drift apart.
pub fn load_cli<C, R, V>(
    command: &clap::Command,
    matches: &ArgMatches,
    validate: impl FnOnce(R) -> Result<V, ConfigError>,
) -> Result<(C, V), ConfigError>
where
    C: clap::FromArgMatches + ConfigFileArg,
    R: DeserializeOwned,
{
    let cli = C::from_arg_matches(matches).map_err(|e| ConfigError::Other(e.to_string()))?;
    let raw: R = load(command, matches, cli.config_file(), &["config"])?;
    Ok((cli, validate(raw)?))
}

/// Builds `T` from the arguments of `command` as parsed into `matches`, and an
/// optional config file. `skip` lists argument ids that are not configuration
/// (e.g. `config` itself).
pub fn load<T: DeserializeOwned>(
    command: &clap::Command,
    matches: &ArgMatches,
    file: Option<&Path>,
    skip: &[&str],
) -> Result<T, ConfigError> {
    let mut defaults = config::Config::builder();
    let mut explicit = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if skip.contains(&id) {
            continue;
        }
        let Some(raw) = matches.get_raw(id) else {
            continue;
        };
        let values: Vec<String> = raw
            .map(|v| {
                v.to_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ConfigError::invalid(id, "value is not valid UTF-8"))
            })
            .collect::<Result<_, _>>()?;
        let value = match values.len() {
            0 => continue,
            1 => config::Value::from(values.into_iter().next().unwrap_or_default()),
            _ => config::Value::from(values),
        };
        match matches.value_source(id) {
            Some(ValueSource::DefaultValue) => {
                defaults = defaults
                    .set_default(id, value)
                    .map_err(|e| ConfigError::invalid(id, e.to_string()))?;
            }
            _ => explicit.push((id.to_owned(), value)),
        }
    }
    let mut builder = defaults;
    let mut file_text = None;
    if let Some(path) = file {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: shown.clone(),
            problem: e.to_string(),
        })?;
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => config::FileFormat::Yaml,
            Some("toml") | None => config::FileFormat::Toml,
            Some(other) => {
                return Err(ConfigError::File {
                    path: shown,
                    problem: format!("unsupported extension .{other} (use .toml, .yaml or .yml)"),
                })
            }
        };
        builder = builder.add_source(config::File::from_str(&text, format));
        file_text = Some((shown, text, format));
    }
    for (id, value) in explicit {
        builder = builder
            .set_override(&id, value)
            .map_err(|e| ConfigError::invalid(&id, e.to_string()))?;
    }
    let built = builder.build().map_err(|e| match (e, &file_text) {
        (config::ConfigError::FileParse { cause, .. }, Some((path, text, format))) => {
            ConfigError::File {
                path: path.clone(),
                problem: parse_problem(text, *format, &*cause),
            }
        }
        (other, _) => redacted(other),
    })?;
    built.try_deserialize::<T>().map_err(redacted)
}

/// Where and why a config file does not parse, without the offending line:
/// the parsers quote it, and it may hold a token.
fn parse_problem(
    text: &str,
    format: config::FileFormat,
    cause: &(dyn std::error::Error + 'static),
) -> String {
    if let Some(e) = cause.downcast_ref::<toml::de::Error>() {
        let at = e.span().map_or(String::new(), |span| {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(" at line {line}, column {column}")
        });
        let why = e.message().lines().next().unwrap_or("syntax error");
        return format!("not valid TOML{at}: {why}");
    }
    if let Some(e) = cause.downcast_ref::<yaml_rust2::ScanError>() {
        let m = e.marker();
        return format!(
            "not valid YAML at line {}, column {}: {}",
            m.line(),
            m.col() + 1,
            e.info()
        );
    }
    let name = match format {
        config::FileFormat::Yaml => "YAML",
        _ => "TOML",
    };
    format!("not valid {name}")
}

/// A `config` error in the operator's terms, never quoting a value: a value
/// of the wrong type may be a secret in the wrong place.
fn redacted(e: config::ConfigError) -> ConfigError {
    match e {
        config::ConfigError::Type {
            key: Some(key),
            unexpected,
            expected,
            ..
        } => ConfigError::invalid(
            key,
            format!("expected {expected}, got {}", value_kind(&unexpected)),
        ),
        config::ConfigError::At {
            error,
            key: Some(key),
            ..
        } => match *error {
            config::ConfigError::Type {
                unexpected,
                expected,
                ..
            } => ConfigError::invalid(
                key,
                format!("expected {expected}, got {}", value_kind(&unexpected)),
            ),
            other => ConfigError::invalid(key, other.to_string()),
        },
        other => ConfigError::Other(other.to_string()),
    }
}

/// `string "hunter2"` → `a string`: what kind of value, not which.
fn value_kind(unexpected: &impl std::fmt::Display) -> String {
    let shown = unexpected.to_string();
    let kind = shown.split(['`', '"']).next().unwrap_or_default().trim();
    format!("a {kind}")
}

/// Parses the humantime duration `text` of config key `key` (`250ms`, `5s`,
/// `72h`) and bounds it by `max`: an unbounded one passes validation and
/// later overflows (`Instant + Duration` panics), far from the setting.
pub fn duration_at_most(key: &str, text: &str, max: Duration) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        ConfigError::invalid(
            key,
            format!("{text:?} is not a duration ({e}); examples: 250ms, 5s, 10m"),
        )
    })?;
    if d > max {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{text:?} is longer than the maximum of {}",
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

/// A token or signing secret from the environment or a config file, checked:
/// a single trailing newline (what `echo >file`, editors and
/// `kubectl create secret --from-file` leave) is removed; any other control
/// character, or whitespace at either end, is refused naming the key (never
/// the value), because such a token is accepted at start-up and then never
/// matches. An empty value counts as unset.
pub fn secret(
    key: &str,
    value: Option<Secret<String>>,
) -> Result<Option<Secret<String>>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let raw = value.into_inner();
    let trimmed = raw
        .strip_suffix("\r\n")
        .or_else(|| raw.strip_suffix('\n'))
        .unwrap_or(&raw);
    if trimmed.is_empty() {
        return Ok(None);
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ConfigError::invalid(
            key,
            "contains a line break or another control character (more than one trailing newline?)",
        ));
    }
    if trimmed.starts_with(char::is_whitespace) || trimmed.ends_with(char::is_whitespace) {
        return Err(ConfigError::invalid(
            key,
            "starts or ends with whitespace; tokens never do",
        ));
    }
    Ok(Some(Secret::new(trimmed.to_owned())))
}

/// Serde helper for durations written as humantime strings (`250ms`, `72h`).
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use clap::{CommandFactory, FromArgMatches, Parser};
    use serde::Deserialize;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[arg(long, env = "OPS_TEST_POLL_MS", default_value_t = 100)]
        poll_ms: u64,
        #[arg(long, default_value = "a")]
        name: String,
        #[arg(long, default_value = "false")]
        flag: bool,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        poll_ms: u64,
        name: String,
        flag: bool,
    }

    fn run(args: &[&str], file: Option<&str>) -> Result<Conf, ConfigError> {
        let cmd = Cli::command();
        let m = cmd.clone().get_matches_from(args);
        let cli = Cli::from_arg_matches(&m).unwrap();
        let mut tmp = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        let path = file.map(|text| {
            tmp.write_all(text.as_bytes()).unwrap();
            tmp.path().to_path_buf()
        });
        assert!(cli.config.is_none());
        load(&cmd, &m, path.as_deref(), &["config"])
    }

    #[test]
    fn precedence_is_cli_then_file_then_default() {
        let c = run(&["x"], None).unwrap();
        assert_eq!(
            c,
            Conf {
                poll_ms: 100,
                name: "a".into(),
                flag: false
            }
        );
        let c = run(&["x"], Some("poll_ms = 7\nname = \"file\"\n")).unwrap();
        assert_eq!(c.poll_ms, 7);
        assert_eq!(c.name, "file");
        let c = run(&["x", "--poll-ms", "9"], Some("poll_ms = 7\n")).unwrap();
        assert_eq!(c.poll_ms, 9);
    }

    #[test]
    fn unknown_file_key_is_named() {
        let err = run(&["x"], Some("pol_ms = 7\n")).unwrap_err().to_string();
        assert!(err.contains("pol_ms"), "{err}");
    }

    #[test]
    fn a_syntax_error_names_the_line_but_never_quotes_it() {
        let err = run(
            &["x"],
            Some("name = \"ok\"\npoll_ms = \"hunter2-secret-value\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("hunter2"), "the line leaked: {err}");
    }

    #[test]
    fn a_yaml_syntax_error_never_quotes_the_line() {
        let cmd = Cli::command();
        let m = cmd.clone().get_matches_from(["x"]);
        let mut tmp = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        tmp.write_all(b"name: ok\npoll_ms: [hunter2-secret-value\n")
            .unwrap();
        let err = load::<Conf>(&cmd, &m, Some(tmp.path()), &["config"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("YAML"), "{err}");
        assert!(!err.contains("hunter2"), "the line leaked: {err}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_not_quoted() {
        let err = run(&["x"], Some("poll_ms = \"hunter2-secret-value\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("poll_ms") && err.contains("string"), "{err}");
        assert!(!err.contains("hunter2"), "the value leaked: {err}");
    }

    #[test]
    fn durations_are_bounded_naming_the_key() {
        let max = Duration::from_secs(3600);
        assert_eq!(
            duration_at_most("K", " 5s ", max).unwrap(),
            Duration::from_secs(5)
        );
        let err = duration_at_most("SHUTDOWN_TIMEOUT", "100000000years", max)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SHUTDOWN_TIMEOUT") && err.contains("maximum"),
            "{err}"
        );
        let err = duration_at_most("K", "soon", max).unwrap_err().to_string();
        assert!(err.contains("not a duration"), "{err}");
    }

    #[test]
    fn a_secret_loses_one_trailing_newline_and_nothing_else() {
        let s = |v: &str| secret("API_TOKEN", Some(Secret::new(v.to_owned())));
        assert_eq!(s("tok\n").unwrap().unwrap().expose(), "tok");
        assert_eq!(s("tok\r\n").unwrap().unwrap().expose(), "tok");
        assert_eq!(s("tok").unwrap().unwrap().expose(), "tok");
        assert!(s("").unwrap().is_none());
        assert!(s("\n").unwrap().is_none());
        for bad in [
            "hunter2\n\n",
            "hun\nter2",
            " hunter2",
            "hunter2 ",
            "hunter2\t",
        ] {
            let err = s(bad).unwrap_err().to_string();
            assert!(err.contains("API_TOKEN"), "{err}");
            assert!(!err.contains("hunter"), "the value leaked: {err}");
        }
    }

    #[test]
    fn wrong_type_is_named() {
        let err = run(&["x"], Some("poll_ms = \"soon\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("poll_ms"), "{err}");
    }
}
