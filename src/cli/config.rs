//! Options from a TOML file under flags and environment variables: the
//! file's values become the options' defaults, so clap's own order gives
//! flags > environment > file > built-in defaults. Keys are the long option
//! names (`port-offset = 1000`); an unknown key, or a value the option's
//! parser refuses, is an error naming the key and the file.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};

/// The option naming the config file (`--config`).
pub const CONFIG_KEY: &str = "config";

/// Options that cannot come from a file: the file itself, and one-shot actions.
const NOT_IN_FILE: [&str; 4] = [CONFIG_KEY, "print-config", "help", "version"];

/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML (the message says where).
    #[error("config file {}: not valid TOML: {message}", file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key that is no option of this program.
    #[error("config file {}: unknown key `{key}`{hint}", file.display())]
    UnknownKey {
        /// The file.
        file: PathBuf,
        /// The key.
        key: String,
        /// A suggestion, or how to list the keys.
        hint: String,
    },
    /// A value the option refuses.
    #[error("config file {}: key `{key}`: {reason}", file.display())]
    BadValue {
        /// The file.
        file: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why parsing the options failed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Bad flags or environment, or `--help`/`--version` (clap renders and exits).
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// A bad config file.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Options parsed from every layer.
#[derive(Debug)]
pub struct Layered {
    /// The command as parsed: the file's values are its defaults.
    pub command: Command,
    /// The matches (of the subcommand too, when there is one).
    pub matches: ArgMatches,
    /// The config file used, if any.
    pub file: Option<PathBuf>,
    /// Ids of the options whose value the file gave (none came from a flag
    /// or the environment).
    pub from_file: BTreeSet<String>,
}

/// Parses `args` (the program name first) against `cmd`, with the config
/// file named by `--config`, or else by `env_config` (the value of the
/// environment variable), read under them. For a command with subcommands
/// the file applies to the one that `args` selects.
///
/// # Errors
/// [`ParseError::Config`] for an unreadable or bad file, naming it (and the
/// key); [`ParseError::Clap`] for bad flags or environment, or help.
pub fn parse(
    cmd: Command,
    args: Vec<OsString>,
    env_config: Option<OsString>,
) -> Result<Layered, ParseError> {
    let file = config_arg(&args).or(env_config).map(PathBuf::from);
    let Some(file) = file else {
        let matches = cmd.clone().try_get_matches_from(args)?;
        return Ok(Layered {
            command: cmd,
            matches,
            file: None,
            from_file: BTreeSet::new(),
        });
    };
    let text = read(&file)?;
    let (command, from_file) = match selected_subcommand(&cmd, &args) {
        Some(name) => {
            let sub = cmd.find_subcommand(&name).expect("selected from cmd");
            let values = file_values(sub, &file, &text)?;
            let from_file: BTreeSet<String> = values.iter().map(|(id, _)| id.clone()).collect();
            (
                cmd.mut_subcommand(name, |sub| with_defaults(sub, values)),
                from_file,
            )
        }
        None => {
            let values = file_values(&cmd, &file, &text)?;
            let from_file = values.iter().map(|(id, _)| id.clone()).collect();
            (with_defaults(cmd, values), from_file)
        }
    };
    let matches = command.clone().try_get_matches_from(args)?;
    // Options a flag or the environment set did not come from the file.
    let (_, leaf) = leaf(&command, &matches);
    let from_file = from_file
        .into_iter()
        .filter(|id| leaf.value_source(id) == Some(ValueSource::DefaultValue))
        .collect();
    Ok(Layered {
        command,
        matches,
        file: Some(file),
        from_file,
    })
}

impl Layered {
    /// The options in effect as a config file: every option with a long
    /// name, each with where its value came from (`flag`, `env NAME`,
    /// `file`, `default`), unset ones commented out. Feeding it back as
    /// `--config` gives the same options.
    #[must_use]
    pub fn render(&self) -> String {
        let (cmd, matches) = leaf(&self.command, &self.matches);
        let mut out =
            String::from("# Options in effect (flag > environment > config file > default).\n");
        if let Some(file) = &self.file {
            out.push_str(&format!("# config file: {}\n", file.display()));
        }
        for arg in cmd.get_arguments() {
            let Some(key) = arg.get_long().filter(|k| !NOT_IN_FILE.contains(k)) else {
                continue;
            };
            let id = arg.get_id().as_str();
            let Some(raw) = matches.get_raw(id).and_then(|mut v| v.next()) else {
                out.push_str(&format!("# {key} =   (unset)\n"));
                continue;
            };
            let source = match matches.value_source(id) {
                Some(ValueSource::CommandLine) => "flag".to_owned(),
                Some(ValueSource::EnvVariable) => arg
                    .get_env()
                    .map_or("env".to_owned(), |e| format!("env {}", e.to_string_lossy())),
                _ if self.from_file.contains(id) => "file".to_owned(),
                _ => "default".to_owned(),
            };
            let mut value = raw.to_string_lossy().into_owned();
            if key == "database-url" {
                value = crate::text::redact_password(&value);
            }
            out.push_str(&format!("{key} = {}   # {source}\n", toml_value(&value)));
        }
        out
    }
}

/// The innermost command and its matches (the selected subcommand's, if any).
fn leaf<'a>(cmd: &'a Command, matches: &'a ArgMatches) -> (&'a Command, &'a ArgMatches) {
    match matches.subcommand() {
        Some((name, sub)) => match cmd.find_subcommand(name) {
            Some(sub_cmd) => leaf(sub_cmd, sub),
            None => (cmd, matches),
        },
        None => (cmd, matches),
    }
}

/// `value` as a TOML value: integers and booleans bare, the rest a string.
fn toml_value(value: &str) -> String {
    if value.parse::<i64>().is_ok() || value == "true" || value == "false" {
        value.to_owned()
    } else {
        // A JSON string is a valid TOML basic string.
        serde_json::to_string(value).expect("a string serializes")
    }
}

/// The value of `--config FILE` or `--config=FILE` in `args`, if given.
fn config_arg(args: &[OsString]) -> Option<OsString> {
    let flag = format!("--{CONFIG_KEY}");
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        if arg == "--" {
            return None;
        }
        if *arg == *flag {
            return iter.next().cloned();
        }
        let value = arg
            .to_str()
            .and_then(|a| a.strip_prefix(&flag)?.strip_prefix('='));
        if let Some(value) = value {
            return Some(value.into());
        }
    }
    None
}

/// The subcommand `args` selects: the first argument naming one.
fn selected_subcommand(cmd: &Command, args: &[OsString]) -> Option<String> {
    cmd.get_subcommands().next()?;
    args.iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .find(|a| !a.starts_with('-'))
        .filter(|a| cmd.find_subcommand(a).is_some())
        .map(str::to_owned)
}

fn read(file: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let read_error = |source| ConfigError::Read {
        file: file.to_owned(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(file)
        .map_err(read_error)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(read_error(std::io::Error::other(format!(
            "larger than {} KiB",
            MAX_CONFIG_BYTES >> 10
        ))));
    }
    Ok(text)
}

/// The file's values, checked against `cmd`'s options: (option id, raw value).
fn file_values(
    cmd: &Command,
    file: &Path,
    text: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
    let bad = |key: &str, reason: String| ConfigError::BadValue {
        file: file.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let mut values = Vec::with_capacity(table.len());
    for (key, value) in &table {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && !NOT_IN_FILE.contains(&key.as_str()))
            .ok_or_else(|| unknown_key(cmd, file, key))?;
        let raw = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            _ => return Err(bad(key, "expected a string, number or boolean".to_owned())),
        };
        check_value(arg, key, &raw).map_err(|e| bad(key, format!("invalid value {raw:?}: {e}")))?;
        values.push((arg.get_id().to_string(), raw));
    }
    Ok(values)
}

/// Whether `arg`'s parser takes `raw` (parsed alone, as `--key=raw`).
fn check_value(arg: &clap::Arg, key: &str, raw: &str) -> Result<(), String> {
    if !arg.get_action().takes_values() {
        return match raw {
            "true" | "false" => Ok(()),
            _ => Err("expected true or false".to_owned()),
        };
    }
    // The option alone: without what it requires of or conflicts with
    // others, which are not in this one-option command.
    let mut alone = clap::Arg::new(arg.get_id().clone())
        .long(key.to_owned())
        .action(arg.get_action().clone())
        .value_parser(arg.get_value_parser().clone());
    if let Some(n) = arg.get_num_args() {
        alone = alone.num_args(n);
    }
    if let Some(d) = arg.get_value_delimiter() {
        alone = alone.value_delimiter(d);
    }
    Command::new("config-check")
        .arg(alone)
        .try_get_matches_from([
            OsString::from("config-check"),
            format!("--{key}={raw}").into(),
        ])
        .map(drop)
        .map_err(|e| reason(&e))
}

fn unknown_key(cmd: &Command, file: &Path, key: &str) -> ConfigError {
    let kebab = key.replace('_', "-");
    let hint = if NOT_IN_FILE.contains(&key) {
        " (not allowed in a config file)".to_owned()
    } else if kebab != key && cmd.get_arguments().any(|a| a.get_long() == Some(&kebab)) {
        format!(" (did you mean `{kebab}`?)")
    } else {
        format!(
            " (the keys are the long option names of `{} --help`)",
            cmd.get_name()
        )
    };
    ConfigError::UnknownKey {
        file: file.to_owned(),
        key: key.to_owned(),
        hint,
    }
}

/// What a value parser's error says, without clap's rendering around it.
fn reason(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        return format!("expected one of: {}", valid.join(", "));
    }
    match std::error::Error::source(e) {
        Some(source) => source.to_string(),
        None => e.kind().as_str().unwrap_or("invalid value").to_owned(),
    }
}

/// `cmd` with each of `values` as its option's default (a file value makes
/// a required option optional: the file gave it).
fn with_defaults(cmd: Command, values: Vec<(String, String)>) -> Command {
    values.into_iter().fold(cmd, |cmd, (id, raw)| {
        cmd.mut_arg(id, |arg| arg.default_value(raw).required(false))
    })
}

#[cfg(test)]
mod tests;
