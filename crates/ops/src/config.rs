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

use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::de::DeserializeOwned;

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
    }
    for (id, value) in explicit {
        builder = builder
            .set_override(&id, value)
            .map_err(|e| ConfigError::invalid(&id, e.to_string()))?;
    }
    let built = builder
        .build()
        .map_err(|e| ConfigError::Other(e.to_string()))?;
    built.try_deserialize::<T>().map_err(|e| match e {
        config::ConfigError::Type {
            key: Some(key),
            unexpected,
            expected,
            ..
        } => ConfigError::invalid(key, format!("expected {expected}, got {unexpected}")),
        other => ConfigError::Other(other.to_string()),
    })
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
    fn wrong_type_is_named() {
        let err = run(&["x"], Some("poll_ms = \"soon\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("poll_ms"), "{err}");
    }
}
