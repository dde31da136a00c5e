use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, Command, FromArgMatches as _, value_parser};

use super::*;
use crate::cli::{ServiceCli, StreamgateCli, StreamgateCommand};
use crate::rt;
use crate::services::ServiceKind;

/// A config file with `text`, in a fresh temporary directory.
fn file_with(text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sg-config-{}", rt::random_hex128()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("streamgate.toml");
    std::fs::write(&path, text).expect("config file");
    path
}

fn args(list: &[&str]) -> Vec<OsString> {
    std::iter::once("svc")
        .chain(list.iter().copied())
        .map(OsString::from)
        .collect()
}

/// A command like the binaries': one option whose environment variable is
/// never set, and one whose variable is always set (`PATH`: the test
/// cannot set variables, so it uses one the process has).
fn command() -> Command {
    Command::new("svc")
        .arg(
            Arg::new("port_offset")
                .long("port-offset")
                .env("STREAMGATE_TEST_NEVER_SET_7F3A")
                .value_parser(value_parser!(u16))
                .default_value("0"),
        )
        .arg(
            Arg::new("search_path")
                .long("search-path")
                .env("PATH")
                .default_value("/nowhere"),
        )
        .arg(
            Arg::new("registry")
                .long("registry")
                .value_parser(["nats-kv", "consul"])
                .default_value("nats-kv"),
        )
        .arg(
            Arg::new("key_file")
                .long("key-file")
                .required(true)
                .value_parser(value_parser!(PathBuf)),
        )
        .arg(Arg::new("config").long("config"))
}

fn get<'a>(l: &'a Layered, id: &str) -> &'a str {
    l.matches
        .get_raw(id)
        .and_then(|mut v| v.next())
        .map_or("", |v| v.to_str().expect("utf-8"))
}

#[test]
fn flags_beat_env_beat_the_file_beats_defaults() {
    let path_env = std::env::var("PATH").expect("the test process has PATH");
    let file = file_with(
        "port-offset = 1000\nsearch-path = \"/from/file\"\nregistry = \"consul\"\nkey-file = \"k\"\n",
    );
    let config = file.to_str().expect("utf-8");

    // The file over the defaults (the required option included), the
    // environment over the file.
    let l = parse(command(), args(&["--config", config]), None).expect("parses");
    assert_eq!(get(&l, "port_offset"), "1000");
    assert_eq!(get(&l, "registry"), "consul");
    assert_eq!(get(&l, "key_file"), "k");
    assert_eq!(get(&l, "search_path"), path_env, "env beats the file");
    let from_file: Vec<&str> = l.from_file.iter().map(String::as_str).collect();
    assert_eq!(from_file, ["key_file", "port_offset", "registry"]);

    // Flags over everything.
    let l = parse(
        command(),
        args(&[
            "--port-offset=7",
            "--search-path",
            "/from/flag",
            "--config",
            config,
        ]),
        None,
    )
    .expect("parses");
    assert_eq!(get(&l, "port_offset"), "7");
    assert_eq!(get(&l, "search_path"), "/from/flag");
    assert_eq!(get(&l, "registry"), "consul");
    assert!(!l.from_file.contains("port_offset"), "a flag set it");

    // No file: the defaults (and env), and the required option is required.
    let l = parse(command(), args(&["--key-file", "x"]), None).expect("parses");
    assert_eq!(get(&l, "port_offset"), "0");
    assert_eq!(get(&l, "search_path"), path_env);
    let missing = parse(command(), args(&[]), None).expect_err("key-file is required");
    assert!(missing.to_string().contains("--key-file"), "{missing}");
    let _ = std::fs::remove_dir_all(file.parent().expect("dir"));
}

#[test]
fn the_file_can_be_named_by_the_environment_and_the_flag_wins() {
    let from_env = file_with("port-offset = 1\nkey-file = \"a\"\n");
    let from_flag = file_with("port-offset = 2\nkey-file = \"b\"\n");
    let l = parse(command(), args(&[]), Some(from_env.clone().into())).expect("parses");
    assert_eq!(
        (get(&l, "port_offset"), l.file.as_ref()),
        ("1", Some(&from_env))
    );
    let l = parse(
        command(),
        args(&["--config", from_flag.to_str().expect("utf-8")]),
        Some(from_env.clone().into()),
    )
    .expect("parses");
    assert_eq!(get(&l, "port_offset"), "2");
    for f in [from_env, from_flag] {
        let _ = std::fs::remove_dir_all(f.parent().expect("dir"));
    }
}

#[test]
fn unknown_keys_and_bad_values_name_the_key_and_the_file() {
    let cases = [
        ("prot-offset = 1", "unknown key `prot-offset`", "--help"),
        (
            "port_offset = 1",
            "unknown key `port_offset`",
            "did you mean `port-offset`?",
        ),
        (
            "config = \"other.toml\"",
            "unknown key `config`",
            "not allowed",
        ),
        (
            "port-offset = 70000",
            "key `port-offset`",
            "invalid value \"70000\"",
        ),
        (
            "port-offset = \"ten\"",
            "key `port-offset`",
            "invalid digit",
        ),
        (
            "registry = \"etcd\"",
            "key `registry`",
            "expected one of: nats-kv, consul",
        ),
        (
            "registry = [\"consul\"]",
            "key `registry`",
            "expected a string, number or boolean",
        ),
        ("[registry]\nx = 1", "key `registry`", "expected a string"),
        ("port-offset = ", "not valid TOML", "line 1"),
    ];
    for (text, what, detail) in cases {
        let file = file_with(text);
        let err = parse(
            command(),
            args(&["--config", file.to_str().expect("utf-8")]),
            None,
        )
        .expect_err(text)
        .to_string();
        assert!(
            err.contains(what) && err.contains(detail),
            "{text:?}: {err}"
        );
        assert!(
            err.contains(&file.display().to_string()),
            "names the file: {err}"
        );
        let _ = std::fs::remove_dir_all(file.parent().expect("dir"));
    }
    let missing = std::env::temp_dir().join(format!("sg-missing-{}.toml", rt::random_hex128()));
    let err = parse(command(), args(&[]), Some(missing.clone().into()))
        .expect_err("missing file")
        .to_string();
    assert!(err.contains(&missing.display().to_string()), "{err}");
}

#[test]
fn print_config_round_trips_with_sources() {
    let file = file_with("port-offset = 1000\nkey-file = \"keys dir/k\"\n");
    let config = file.to_str().expect("utf-8");
    let l = parse(
        command(),
        args(&["--config", config, "--registry", "consul"]),
        None,
    )
    .expect("parses");
    let out = l.render();
    assert!(out.contains("port-offset = 1000   # file"), "{out}");
    assert!(out.contains("registry = \"consul\"   # flag"), "{out}");
    assert!(
        out.contains("search-path = ") && out.contains("# env PATH"),
        "{out}"
    );
    assert!(out.contains("key-file = \"keys dir/k\"   # file"), "{out}");
    assert!(!out.contains("\nconfig ="), "the file names no file: {out}");

    // Fed back as the config file it gives the same options.
    let again = file_with(&out);
    let l2 = parse(
        command(),
        args(&["--config", again.to_str().expect("utf-8")]),
        None,
    )
    .expect("its own output parses");
    for id in ["port_offset", "registry", "key_file", "search_path"] {
        assert_eq!(get(&l, id), get(&l2, id), "{id}");
    }
    for f in [file, again] {
        let _ = std::fs::remove_dir_all(f.parent().expect("dir"));
    }
}

/// The long options of `cmd` a config file may set.
fn file_keys(cmd: &Command) -> Vec<String> {
    cmd.get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|k| !NOT_IN_FILE.contains(k))
        .map(str::to_owned)
        .collect()
}

/// Whether `text` sets `key` or shows it commented out (`# key =`).
fn mentions(text: &str, key: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim_start().trim_start_matches('#').trim_start();
        line.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    })
}

fn example(name: &str) -> (String, String) {
    let path = format!("{}/config/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("the example file");
    (path, text)
}

#[test]
fn the_example_file_is_valid_for_every_binary_and_lists_every_option() {
    let (path, text) = example("streamgate.example.toml");
    for kind in ServiceKind::ALL {
        let cmd = ServiceCli::command_for(kind);
        for key in file_keys(&cmd) {
            assert!(mentions(&text, &key), "{path} does not list `{key}`");
        }
        let l = parse(
            cmd,
            vec![kind.name().into(), "--config".into(), path.clone().into()],
            None,
        )
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
        let cli = ServiceCli::from_arg_matches(&l.matches).expect("typed");
        assert_eq!(cli.cluster.tls_ca, Some(PathBuf::from("certs/ca.pem")));
        assert_eq!(cli.cluster.service_key_file, None, "mutual TLS needs none");
        assert_eq!(cli.common.log.log_format, crate::cli::LogFormat::Json);
        assert_eq!(cli.node.data_dir, PathBuf::from("data"));
    }
}

/// Every option a file may set appears in the example, set or commented
/// out (`key = ...` or `# key = ...` at the start of a line).
#[test]
fn the_example_file_names_every_option() {
    let example = include_str!("../../../config/streamgate.example.toml");
    let named = |key: &str| {
        example.lines().any(|line| {
            let line = line.trim_start_matches('#').trim_start();
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
    };
    let cmd = ServiceCli::command_for(ServiceKind::Cache);
    let keys: Vec<&str> = cmd
        .get_arguments()
        .filter_map(clap::Arg::get_long)
        .filter(|key| !NOT_IN_FILE.contains(key))
        .collect();
    assert!(keys.contains(&"port") && keys.len() > 15, "{keys:?}");
    for key in keys {
        assert!(named(key), "config/streamgate.example.toml lacks `{key}`");
    }
}

#[test]
fn the_monolith_example_is_valid_for_the_monolith_and_lists_every_option() {
    use clap::CommandFactory as _;
    let (path, text) = example("monolith.example.toml");
    let cmd = StreamgateCli::command();
    let monolith = cmd.find_subcommand("monolith").expect("monolith");
    for key in file_keys(monolith) {
        assert!(mentions(&text, &key), "{path} does not list `{key}`");
    }
    let argv: Vec<OsString> = ["streamgate", "monolith", "--config", &path]
        .into_iter()
        .map(OsString::from)
        .collect();
    let l = parse(cmd, argv, None).unwrap_or_else(|e| panic!("{path}: {e}"));
    let cli = StreamgateCli::from_arg_matches(&l.matches).expect("typed");
    let StreamgateCommand::Monolith { node, common } = cli.command else {
        panic!("monolith");
    };
    assert_eq!(node.data_dir, PathBuf::from("data"));
    assert_eq!(common.log.log_format, crate::cli::LogFormat::Text);

    // The cluster example is refused by the monolith, as its header says.
    let (cluster, _) = example("streamgate.example.toml");
    let argv: Vec<OsString> = ["streamgate", "monolith", "--config", &cluster]
        .into_iter()
        .map(OsString::from)
        .collect();
    let err = parse(StreamgateCli::command(), argv, None)
        .expect_err("cluster keys")
        .to_string();
    assert!(err.contains("unknown key"), "{err}");
}

#[test]
fn streamgate_applies_the_file_to_the_subcommand_it_runs() {
    use clap::CommandFactory as _;
    let file = file_with("port-offset = 3000\ndata-dir = \"d\"\nservice-key-file = \"k\"\n");
    let config = file.to_str().expect("utf-8");
    let argv = |list: &[&str]| -> Vec<OsString> {
        std::iter::once("streamgate")
            .chain(list.iter().copied())
            .map(OsString::from)
            .collect()
    };
    let l = parse(
        StreamgateCli::command(),
        argv(&["service", "cache", "--config", config]),
        None,
    )
    .expect("parses");
    let cli = StreamgateCli::from_arg_matches(&l.matches).expect("typed");
    let StreamgateCommand::Service { node, cluster, .. } = cli.command else {
        panic!("service");
    };
    assert_eq!(node.port_offset, 3000);
    assert_eq!(cluster.service_key_file, Some(PathBuf::from("k")));

    // The monolith has no cluster options: the same file is refused, by key.
    let err = parse(
        StreamgateCli::command(),
        argv(&["monolith", "--config", config]),
        None,
    )
    .expect_err("no such key for the monolith")
    .to_string();
    assert!(err.contains("unknown key `service-key-file`"), "{err}");
    let _ = std::fs::remove_dir_all(file.parent().expect("dir"));
}
