//! `transcast serve --config FILE` (or `TRANSCAST_CONFIG`): a TOML file whose top-level keys are `serve`'s flags
//! without their leading dashes, with the same meaning and defaults:
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! max-clients = 5000
//! no-pace = true                     # a flag: true sets it
//! pull = ["lobby=rtsp://cam/stream"] # a flag given several times: an array (or one value)
//! ```
//!
//! Flags on the command line, and their environment variables, override the file (a list flag replaces the
//! file's list). The file is read through the same parser as the command line: each key becomes `--key=VALUE`
//! and is checked on its own first, so a bad value is reported with its key and line. Unknown keys are refused
//! (with the nearest known one), as are values of the wrong type. `transcast check-config FILE` runs these checks
//! and the ones the daemon runs at startup (values, templates) without starting it.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgAction, Args, Command, FromArgMatches};
use sha2::{Digest, Sha256};

use crate::config::streams::{DeclaredStream, StreamTable};
use crate::config::{Config, ConfigSource, ServeArgs};

/// The key of the `[[stream]]` tables: not a flag.
const STREAM_KEY: &str = "stream";

/// The environment variable that names the config file when `--config` is not given.
pub const ENV: &str = "TRANSCAST_CONFIG";

/// What a config file held, for the log and the API.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file, as it was named.
    pub file: String,
    /// Keys the file set (those the command line overrode included).
    pub keys: usize,
    /// Keys the file set that the command line did not override, with their lines.
    lines: Vec<(String, usize)>,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    /// The `[[stream]]` tables, with their lines.
    pub streams: Vec<(StreamTable, usize)>,
}

/// The `[[stream]]` tables of a file (its other keys are the flags, read apart).
#[derive(serde::Deserialize)]
struct Tables {
    #[serde(default)]
    stream: Vec<toml::Spanned<StreamTable>>,
}

/// The daemon's configuration from the file at `path` and the command line (`argv`: what follows `serve`),
/// which overrides it: every check `serve` runs before it starts, each error naming the file's line.
pub fn load(path: &Path, argv: &[OsString]) -> Result<(Config, Loaded), String> {
    let (args, loaded) = serve_args(path, argv)?;
    let mut config = Config::from_args(args).map_err(|e| loaded.locate(e))?;
    for (table, line) in &loaded.streams {
        let at = format!("{}:{line}: stream '{}'", loaded.file, table.name);
        let declared = DeclaredStream::resolve(table, &config).map_err(|e| format!("{at}: {e}"))?;
        if config.streams.iter().any(|d| d.name == declared.name) {
            return Err(format!("{at}: declared twice"));
        }
        if declared.pull.is_some() && config.pulls.iter().any(|p| p.name == declared.name) {
            return Err(format!("{at}: --pull pulls it already"));
        }
        config.streams.push(declared);
    }
    config.source = Some(ConfigSource {
        path: path.to_path_buf(),
        argv: argv.to_vec(),
        sha256: loaded.sha256.clone(),
    });
    Ok((config, loaded))
}

/// `serve`'s arguments as the command line (`argv`: what follows `serve`) and the file at `path` give them.
pub fn serve_args(path: &Path, argv: &[OsString]) -> Result<(ServeArgs, Loaded), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    let file = path.display().to_string();
    let table: std::collections::BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>> =
        toml::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
    let cmd = command();
    let given = cmd
        .clone()
        .try_get_matches_from(std::iter::once(OsString::from("serve")).chain(argv.iter().cloned()))
        .map_err(|e| clap_message(&e))?;
    let streams = toml::from_str::<Tables>(&text)
        .map_err(|e| format!("{file}: {e}"))?
        .stream
        .into_iter()
        .map(|t| {
            let line = line_of(&text, t.span().start);
            (t.into_inner(), line)
        })
        .collect();
    let mut tokens = Vec::new();
    let mut lines = Vec::new();
    for (key, value) in &table {
        if key.get_ref() == STREAM_KEY {
            continue;
        }
        let line = line_of(&text, key.span().start);
        let at = format!("{file}:{line}: key '{}'", key.get_ref());
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.get_ref().as_str()) && !is_internal(a))
            .ok_or_else(|| unknown(&cmd, &at, key.get_ref()))?;
        if matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let these = to_tokens(key.get_ref(), arg.get_action(), value.get_ref())
            .map_err(|e| format!("{at}: {e}"))?;
        cmd.clone()
            .try_get_matches_from(std::iter::once("serve".to_string()).chain(these.iter().cloned()))
            .map_err(|e| format!("{at}: {}", clap_message(&e)))?;
        lines.push((key.get_ref().clone(), line));
        tokens.extend(these);
    }
    let all = std::iter::once(OsString::from("serve"))
        .chain(tokens.into_iter().map(OsString::from))
        .chain(argv.iter().cloned());
    let matches = cmd
        .try_get_matches_from(all)
        .map_err(|e| format!("{file}: {}", clap_message(&e)))?;
    let args = ServeArgs::from_arg_matches(&matches).map_err(|e| e.render().to_string())?;
    Ok((
        args,
        Loaded {
            file,
            keys: table.len(),
            lines,
            sha256: format!("{:x}", Sha256::digest(text.as_bytes())),
            streams,
        },
    ))
}

impl Loaded {
    /// An error about the configuration (from [`crate::config::Config::from_args`], which names flags) with
    /// where the file set the flag it names, if it did.
    pub fn locate(&self, message: String) -> String {
        let set_here = self.lines.iter().find(|(key, _)| {
            let flag = format!("--{key}");
            message.match_indices(&flag).any(|(i, _)| {
                !message[i + flag.len()..]
                    .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
            })
        });
        match set_here {
            Some((key, line)) => format!("{message} (key '{key}' at {}:{line})", self.file),
            None => message,
        }
    }
}

/// `serve`'s arguments as a command of their own (what the file's keys are checked against).
fn command() -> Command {
    ServeArgs::augment_args(Command::new("serve")).args_override_self(true)
}

/// Arguments that are not keys: help, `--config` itself, and hidden flags (for tests).
fn is_internal(a: &clap::Arg) -> bool {
    a.is_hide_set() || matches!(a.get_long(), Some("help" | "version" | "config"))
}

/// The file's keys a file may set, as `--help` lists them.
pub fn keys() -> Vec<String> {
    command()
        .get_arguments()
        .filter(|a| !is_internal(a))
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect()
}

fn unknown(cmd: &Command, at: &str, key: &str) -> String {
    let nearest = cmd
        .get_arguments()
        .filter(|a| !is_internal(a))
        .filter_map(|a| a.get_long())
        .map(|k| (edit_distance(k, key), k))
        .min();
    match nearest {
        Some((d, k)) if d <= 3 => format!("{at}: no such key (did you mean '{k}'?)"),
        _ => format!("{at}: no such key (the keys are the flags of `transcast serve --help`)"),
    }
}

/// Levenshtein distance, for suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A key's value as command-line arguments: `--key=VALUE` (each item of an array for a repeatable flag), or
/// `--key` for a flag that is true.
fn to_tokens(key: &str, action: &ArgAction, v: &toml::Value) -> Result<Vec<String>, String> {
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        other => Err(format!(
            "expected a string or a number, got {}",
            other.type_str()
        )),
    };
    match action {
        ArgAction::SetTrue | ArgAction::SetFalse => match v {
            toml::Value::Boolean(true) => Ok(vec![format!("--{key}")]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            other => Err(format!("expected true or false, got {}", other.type_str())),
        },
        ArgAction::Append => match v {
            toml::Value::Array(items) => items
                .iter()
                .map(|i| scalar(i).map(|s| format!("--{key}={s}")))
                .collect(),
            one => Ok(vec![format!("--{key}={}", scalar(one)?)]),
        },
        _ => Ok(vec![format!("--{key}={}", scalar(v)?)]),
    }
}

/// Clap's message without its prefix and usage lines.
fn clap_message(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key with a value that is not its default: (key, TOML value, the same on the command line).
    const EVERY_KEY: &[(&str, &str, &[&str])] = &[
        (
            "listen",
            r#""127.0.0.1:9999""#,
            &["--listen", "127.0.0.1:9999"],
        ),
        (
            "srt-listen",
            r#""127.0.0.1:9000""#,
            &["--srt-listen", "127.0.0.1:9000"],
        ),
        ("log-format", r#""json""#, &["--log-format", "json"]),
        (
            "pipelines",
            r#""/etc/transcast/p""#,
            &["--pipelines", "/etc/transcast/p"],
        ),
        ("join", r#""live""#, &["--join", "live"]),
        ("max-lag", "7.5", &["--max-lag", "7.5"]),
        ("max-streams", "3", &["--max-streams", "3"]),
        ("max-clients", "5000", &["--max-clients", "5000"]),
        ("max-transcodes", "5", &["--max-transcodes", "5"]),
        ("source-timeout", "12", &["--source-timeout", "12"]),
        ("no-pace", "true", &["--no-pace"]),
        ("max-width", "640", &["--max-width", "640"]),
        ("max-height", "360", &["--max-height", "360"]),
        ("max-fps", "25", &["--max-fps", "25"]),
        ("video-kbps", "900", &["--video-kbps", "900"]),
        ("keyframe-interval", "2.5", &["--keyframe-interval", "2.5"]),
        ("audio-quality", "0.5", &["--audio-quality", "0.5"]),
        ("video-codec", r#""vp9""#, &["--video-codec", "vp9"]),
        ("audio-codec", r#""opus""#, &["--audio-codec", "opus"]),
        ("audio-kbps", "64", &["--audio-kbps", "64"]),
        ("source-isolation", r#""on""#, &["--source-isolation", "on"]),
        (
            "source-memory-limit",
            "512",
            &["--source-memory-limit", "512"],
        ),
        ("max-gop-bytes", "1000000", &["--max-gop-bytes", "1000000"]),
        (
            "token-server",
            r#"["10.0.0.0/8", "::1"]"#,
            &["--token-server", "10.0.0.0/8", "--token-server", "::1"],
        ),
        (
            "api-allow",
            r#"["192.0.2.0/24"]"#,
            &["--api-allow", "192.0.2.0/24"],
        ),
        (
            "trusted-proxy",
            r#""127.0.0.2""#,
            &["--trusted-proxy", "127.0.0.2"],
        ),
        (
            "rtp-target",
            r#"["127.0.0.1:5004"]"#,
            &["--rtp-target", "127.0.0.1:5004"],
        ),
        (
            "rtp-allow",
            r#"["127.0.0.0/8"]"#,
            &["--rtp-allow", "127.0.0.0/8"],
        ),
        (
            "state-dir",
            r#""/var/lib/transcast""#,
            &["--state-dir", "/var/lib/transcast"],
        ),
        ("muxer", r#""webmmux""#, &["--muxer", "webmmux"]),
        ("fallback", r#""none""#, &["--fallback", "none"]),
        ("linger", "45", &["--linger", "45"]),
        ("resume-grace", "0", &["--resume-grace", "0"]),
        (
            "pull",
            r#"["a=http://127.0.0.1:1/live/a", "b=srt://127.0.0.1:9000"]"#,
            &[
                "--pull",
                "a=http://127.0.0.1:1/live/a",
                "--pull",
                "b=srt://127.0.0.1:9000",
            ],
        ),
        (
            "origin",
            r#"["http://127.0.0.1:8081"]"#,
            &["--origin", "http://127.0.0.1:8081"],
        ),
        ("origin-key", r#""o-key""#, &["--origin-key", "o-key"]),
        (
            "hook-url",
            r#""http://127.0.0.1:9/hooks""#,
            &["--hook-url", "http://127.0.0.1:9/hooks"],
        ),
        (
            "auth-url",
            r#""http://127.0.0.1:9/auth""#,
            &["--auth-url", "http://127.0.0.1:9/auth"],
        ),
        ("auth-timeout", "0.5", &["--auth-timeout", "0.5"]),
        ("auth-default", r#""allow""#, &["--auth-default", "allow"]),
        ("auth-cache", "30", &["--auth-cache", "30"]),
        ("edge-key", r#""e-key""#, &["--edge-key", "e-key"]),
        ("pull-start-timeout", "4", &["--pull-start-timeout", "4"]),
        ("pull-linger", "3", &["--pull-linger", "3"]),
        (
            "max-input-pixels",
            "921600",
            &["--max-input-pixels", "921600"],
        ),
        (
            "max-input-dimension",
            "2000",
            &["--max-input-dimension", "2000"],
        ),
        ("max-input-fps", "30", &["--max-input-fps", "30"]),
        ("coalesce-ms", "40", &["--coalesce-ms", "40"]),
        ("segment-seconds", "4", &["--segment-seconds", "4"]),
        (
            "cors-origin",
            r#""https://example.org""#,
            &["--cors-origin", "https://example.org"],
        ),
        ("segment-window", "6", &["--segment-window", "6"]),
        ("send-buffer", "65536", &["--send-buffer", "65536"]),
    ];

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    fn from_flags(flags: &[&str]) -> ServeArgs {
        let m = command()
            .try_get_matches_from(std::iter::once("serve").chain(flags.iter().copied()))
            .unwrap();
        ServeArgs::from_arg_matches(&m).unwrap()
    }

    fn load(text: &str, argv: &[&str]) -> Result<(ServeArgs, Loaded), String> {
        let f = file(text);
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        serve_args(f.path(), &argv)
    }

    #[test]
    fn every_flag_round_trips_through_the_file() {
        let mut listed: Vec<_> = EVERY_KEY.iter().map(|(k, _, _)| k.to_string()).collect();
        let mut known = keys();
        listed.sort();
        known.sort();
        assert_eq!(
            listed, known,
            "every flag of `serve` has a key here, and only those"
        );
        let default = format!("{:?}", ServeArgs::default());
        for (key, value, flags) in EVERY_KEY {
            let (args, _) = load(&format!("{key} = {value}\n"), &[]).unwrap();
            let via_file = format!("{args:?}");
            assert_eq!(via_file, format!("{:?}", from_flags(flags)), "{key}");
            assert_ne!(via_file, default, "{key} changes something");
        }
        let all: String = EVERY_KEY
            .iter()
            .map(|(k, v, _)| format!("{k} = {v}\n"))
            .collect();
        let flags: Vec<&str> = EVERY_KEY
            .iter()
            .flat_map(|(_, _, f)| f.iter().copied())
            .collect();
        let (args, loaded) = load(&all, &[]).unwrap();
        assert_eq!(format!("{args:?}"), format!("{:?}", from_flags(&flags)));
        assert_eq!(loaded.keys, EVERY_KEY.len());
    }

    #[test]
    fn flags_override_the_file_and_replace_its_lists() {
        let text = "max-clients = 5\npull = [\"a=http://127.0.0.1:1/live/a\"]\nlinger = 9\n";
        let (args, _) = load(
            text,
            &[
                "--max-clients",
                "7",
                "--pull",
                "b=http://127.0.0.1:1/live/b",
            ],
        )
        .unwrap();
        assert_eq!(args.max_clients, 7);
        assert_eq!(args.pull.len(), 1);
        assert_eq!(args.pull[0].name, "b");
        assert_eq!(
            args.linger, 9.0,
            "what the flags leave alone comes from the file"
        );
    }

    #[test]
    fn a_bad_file_names_the_key_and_its_line() {
        let cases = [
            (
                "listen = \"127.0.0.1:1\"\n\nmax-client = 5\n",
                ":3: key 'max-client'",
                "did you mean 'max-clients'",
            ),
            (
                "\nmax-lag = \"soon\"\n",
                ":2: key 'max-lag'",
                "invalid value 'soon'",
            ),
            (
                "no-pace = 1\n",
                ":1: key 'no-pace'",
                "expected true or false",
            ),
            (
                "linger = [1, 2]\n",
                ":1: key 'linger'",
                "expected a string or a number",
            ),
            (
                "pull = [\"no-equals-sign\"]\n",
                ":1: key 'pull'",
                "expected NAME=URL",
            ),
            (
                "config = \"other.toml\"\n",
                ":1: key 'config'",
                "no such key",
            ),
            ("listen = \n", "line 1", ""),
        ];
        for (text, place, why) in cases {
            let e = load(text, &[]).unwrap_err();
            assert!(e.contains(place) && e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_value_the_daemon_refuses_is_traced_to_its_line() {
        let (args, loaded) = load("linger = 1\nmax-lag = -3\n", &[]).unwrap();
        let e = crate::config::Config::from_args(args).unwrap_err();
        let e = loaded.locate(e);
        assert!(
            e.contains("--max-lag") && e.contains("key 'max-lag' at") && e.ends_with(":2)"),
            "{e}"
        );
    }

    #[test]
    fn the_example_sets_every_key_with_a_default_to_it_and_lists_the_rest() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/transcast.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let (args, loaded) = serve_args(Path::new(path), &[]).unwrap();
        assert_eq!(format!("{args:?}"), format!("{:?}", ServeArgs::default()));
        assert!(loaded.keys > 20, "{} keys set", loaded.keys);
        for key in keys() {
            assert!(
                text.lines()
                    .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} = "))),
                "transcast.example.toml lists {key}"
            );
        }
    }
}
