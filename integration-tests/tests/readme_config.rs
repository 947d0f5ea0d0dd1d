//! The README's configuration table against the code: every key it names
//! is a key of the binary's config (as the deploy TOML files, which unit
//! tests keep equal to the code's defaults, spell them), every flag is a
//! flag of that binary (read from clap's own `Command`), every key and
//! flag of a binary has a row, and every default it states is the one the
//! binary shows in `--help` and the deploy file holds; and every flag's
//! env var is the one the README's rule names.

use clap::CommandFactory as _;
use gpush_common::config::flags::shown_default_of;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One row of the table.
#[derive(Debug)]
struct Row {
    keys: Vec<String>,
    flags: Vec<String>,
    default: String,
}

/// The rows of the "## Configuration" table, by section (`edge`, `ingress`).
fn readme_rows(readme: &str) -> BTreeMap<String, Vec<Row>> {
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("README has a Configuration section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut rows: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    let mut current = None;
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if let Some(name) = cells[0]
            .strip_prefix("**")
            .and_then(|c| c.strip_suffix("**"))
        {
            current = Some(name.to_owned());
            continue;
        }
        let Some(binary) = &current else { continue };
        let (keys, flags) = match cells[0].split_once('(') {
            Some((keys, flags)) => (keys, flags),
            None => (cells[0], ""),
        };
        let ticked = |text: &str| -> Vec<String> {
            text.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        rows.entry(binary.clone()).or_default().push(Row {
            keys: ticked(keys),
            flags: ticked(flags),
            default: cells[1].replace('`', ""),
        });
    }
    rows
}

/// Every key of a deploy TOML file with its value as written, set or
/// commented out (`# key = ...`), dotted for tables (`auth.jwt_secret`).
fn deploy_keys(text: &str) -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    let mut table = String::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = format!("{name}.");
            continue;
        }
        let line = line.strip_prefix("# ").unwrap_or(line);
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        if key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            let commented = text.contains(&format!("# {line}"));
            let value = if commented {
                String::new()
            } else {
                value.trim_matches('"').to_owned()
            };
            keys.insert(format!("{table}{key}"), value);
        }
    }
    keys
}

/// The long flags of a binary with the default its `--help` shows.
fn clap_flags(command: &clap::Command) -> BTreeMap<String, Option<String>> {
    command
        .get_arguments()
        .filter_map(|arg| Some((format!("--{}", arg.get_long()?), shown_default_of(arg))))
        .filter(|(flag, _)| flag != "--config")
        .collect()
}

#[test]
fn readme_configuration_table_matches_the_code() {
    let rows = readme_rows(&read("README.md"));
    let binaries = [
        (
            "edge",
            clap_flags(&gpush_edge::cli::Cli::command()),
            deploy_keys(&read("deploy/edge.toml")),
        ),
        (
            "ingress",
            clap_flags(&gpush_ingress::cli::Cli::command()),
            deploy_keys(&read("deploy/ingress.toml")),
        ),
    ];
    let mut problems = Vec::new();
    let all_rows: Vec<&Row> = rows.values().flatten().collect();
    let documented: BTreeSet<&String> = rows.values().flatten().flat_map(|r| &r.keys).collect();
    for (binary, flags, keys) in &binaries {
        assert!(keys.contains_key("log_format") && flags.contains_key("--log-format"));
        let Some(rows) = rows.get(*binary) else {
            problems.push(format!("README: no **{binary}** section"));
            continue;
        };
        let mut flagged = BTreeSet::new();
        for row in rows {
            for key in &row.keys {
                if !keys.contains_key(key) {
                    problems.push(format!(
                        "README {binary}: `{key}` is no key of deploy/{binary}.toml"
                    ));
                }
            }
            // "as above": the defaults are the ones of an earlier row.
            // "as above": the defaults of the rows naming these keys.
            let default = if row.default == "as above" {
                all_rows
                    .iter()
                    .filter(|r| r.default != "as above")
                    .filter(|r| r.keys.iter().any(|k| row.keys.contains(k)))
                    .map(|r| r.default.as_str())
                    .collect::<Vec<_>>()
                    .join(" | ")
            } else {
                row.default.clone()
            };
            for flag in &row.flags {
                flagged.insert(flag.clone());
                match flags.get(flag) {
                    None => problems.push(format!(
                        "README {binary}: {flag} is no flag of gpush-{binary}"
                    )),
                    Some(Some(shown)) => {
                        let primary = shown.split(", or ").next().unwrap_or(shown);
                        if !default.contains(primary) {
                            problems.push(format!(
                                "README {binary}: {flag} default {default:?}, --help says {shown:?}"
                            ));
                        }
                    }
                    Some(None) => {}
                }
            }
            for key in &row.keys {
                let value = keys.get(key).map(String::as_str).unwrap_or_default();
                let value = value.trim_matches(['[', ']']).trim_matches('"');
                if !value.is_empty() && !default.contains(value) {
                    problems.push(format!(
                        "README {binary}: `{key}` default {default:?}, deploy/{binary}.toml says {value:?}"
                    ));
                }
            }
        }
        for flag in flags
            .keys()
            .filter(|f| !["--help", "--version"].contains(&f.as_str()))
        {
            if !flagged.contains(flag) {
                problems.push(format!("README {binary}: no row names {flag}"));
            }
        }
        for key in keys.keys() {
            if !documented.contains(key) {
                problems.push(format!(
                    "README: no row names `{key}` (deploy/{binary}.toml)"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "README configuration table drifted:\n  {}",
        problems.join("\n  ")
    );
}

/// The README's rule for env vars: `GPUSH_` + the flag name in capitals.
#[test]
fn env_vars_follow_the_readme_rule() {
    let readme = read("README.md");
    assert!(readme.contains("`GPUSH_` + the flag name in capitals"));
    for command in [
        gpush_edge::cli::Cli::command(),
        gpush_ingress::cli::Cli::command(),
    ] {
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let expected = format!("GPUSH_{}", long.to_uppercase().replace('-', "_"));
            let env = arg.get_env().and_then(|e| e.to_str());
            assert_eq!(
                env,
                Some(expected.as_str()),
                "--{long} of {}",
                command.get_name()
            );
        }
    }
}

#[test]
fn drift_is_caught() {
    let readme = read("README.md");
    let broken = readme.replace(
        "| `shards` (`--shards`) | 64 |",
        "| `shard` (`--shard`) | 64 |",
    );
    assert_ne!(broken, readme, "the shards row moved; update this test");
    let rows = readme_rows(&broken);
    let edge = &rows["edge"];
    assert!(
        edge.iter()
            .any(|r| r.keys == ["shard"] && r.flags == ["--shard"])
    );
    let keys = deploy_keys(&read("deploy/edge.toml"));
    assert!(!keys.contains_key("shard") && keys["shards"] == "64");
    assert!(!clap_flags(&gpush_edge::cli::Cli::command()).contains_key("--shard"));
}

/// Every relative link of the README (the "Where things are" map above
/// all) names a file or folder that exists, so the map cannot drift from
/// the layout.
#[test]
fn readme_links_point_at_files_that_exist() {
    let readme = read("README.md");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut missing = Vec::new();
    let mut checked = 0;
    for piece in readme.split("](").skip(1) {
        let Some(target) = piece.split(')').next() else {
            continue;
        };
        let path = target.split('#').next().unwrap_or_default();
        if path.is_empty() || path.contains("://") || path.starts_with("mailto:") {
            continue;
        }
        checked += 1;
        if !root.join(path).exists() {
            missing.push(path.to_owned());
        }
    }
    assert!(
        checked > 40,
        "only {checked} links found: is the map still there?"
    );
    assert!(
        missing.is_empty(),
        "README links to missing paths: {missing:?}"
    );
}
