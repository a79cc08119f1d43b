//! Named contexts, like kubectl's: where a Tollgate server is and how to
//! authenticate to it, kept in `~/.config/tollgate/config.yaml` (or
//! `$TOLLGATE_PROFILE`) and picked with `--context` / `TOLLGATE_CONTEXT`
//! or the file's `current-context`.
//!
//! A context names a token *file*, never a token: the profile is the kind of
//! file people copy between machines and paste into chats.

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The address a command uses when nothing else names one.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:8181";

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(
        rename = "current-context",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The server's address (`http://…` or `https://…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// A file holding the token to send (the admin token, or an approver key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// A data directory whose `admin.token` to send (a local server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
}

/// Where the profile lives.
pub fn path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TOLLGATE_PROFILE") {
        return Ok(PathBuf::from(p));
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("tollgate/config.yaml"));
    }
    let home =
        std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set; set TOLLGATE_PROFILE"))?;
    Ok(PathBuf::from(home).join(".config/tollgate/config.yaml"))
}

/// The profile; none yet is an empty one.
pub fn load() -> Result<Profile> {
    let p = path()?;
    match std::fs::read_to_string(&p) {
        Ok(text) => serde_yaml_ng::from_str(&text)
            .with_context(|| format!("reading the profile {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Profile::default()),
        Err(e) => Err(e).with_context(|| format!("reading the profile {}", p.display())),
    }
}

pub fn save(profile: &Profile) -> Result<PathBuf> {
    let p = path()?;
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&p, serde_yaml_ng::to_string(profile)?)?;
    Ok(p)
}

/// `~/…` as the shell would expand it.
fn expand(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

/// What a command connects with, once flags, environment and the profile
/// are weighed: a flag or variable wins over the context, the context over
/// the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub addr: String,
    pub token: Option<String>,
    pub data: Option<PathBuf>,
}

/// Resolve against `profile`: `context` (from `--context` or
/// `TOLLGATE_CONTEXT`) must exist; without it, the profile's current one
/// applies if set.
pub fn resolve(
    profile: &Profile,
    context: Option<&str>,
    addr: Option<&str>,
    token: Option<&str>,
    data: Option<&Path>,
) -> Result<Resolved> {
    let name = context.or(profile.current.as_deref());
    let ctx = match name {
        None => None,
        Some(n) => Some(profile.contexts.get(n).ok_or_else(|| {
            let known: Vec<&str> = profile.contexts.keys().map(String::as_str).collect();
            anyhow!(
                "no context {n:?} in the profile (known: {}); see `tollgate context list`",
                known.join(", ")
            )
        })?),
    };
    // An explicit --data means that directory's admin token, whatever the
    // context says.
    let token_file = if data.is_some() {
        None
    } else {
        ctx.and_then(|c| c.token_file.as_deref())
    };
    let token = match (token, token_file) {
        (Some(t), _) => Some(t.to_string()),
        (None, Some(f)) => {
            let f = expand(f);
            let t = std::fs::read_to_string(&f)
                .with_context(|| format!("the context's token_file {}", f.display()))?;
            Some(t.trim().to_string())
        }
        (None, None) => None,
    };
    Ok(Resolved {
        addr: addr
            .map(str::to_string)
            .or_else(|| ctx.and_then(|c| c.addr.clone()))
            .unwrap_or_else(|| DEFAULT_ADDR.to_string()),
        token,
        data: data
            .map(Path::to_path_buf)
            .or_else(|| ctx.and_then(|c| c.data.as_deref().map(expand))),
    })
}

/// `tollgate context …`
#[derive(clap::Subcommand)]
pub enum ContextCmd {
    /// The contexts in the profile; `*` marks the current one.
    List {
        /// Print the profile as JSON (`current-context` and `contexts`).
        #[arg(long)]
        json: bool,
    },
    /// Make NAME the current context.
    Use {
        /// A context in the profile.
        name: String,
    },
    /// Add a context or change one.
    Set {
        /// The context's name (e.g. prod, local).
        name: String,
        /// The server's address (http://… or https://…).
        #[arg(long)]
        addr: Option<String>,
        /// A file holding the token to send (the admin token or an approver key).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// A data directory whose admin.token to send (a local server's).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Remove a context.
    Delete {
        /// A context in the profile.
        name: String,
    },
}

pub fn run(cmd: ContextCmd) -> Result<()> {
    let mut profile = load()?;
    match cmd {
        ContextCmd::List { json: true } => crate::print_json(&serde_json::to_value(&profile)?),
        ContextCmd::List { json: false } => {
            if profile.contexts.is_empty() {
                println!(
                    "no contexts in {}; add one with `tollgate context set NAME --addr URL`",
                    path()?.display()
                );
            }
            for (name, c) in &profile.contexts {
                let mark = if profile.current.as_deref() == Some(name.as_str()) {
                    "*"
                } else {
                    " "
                };
                let auth = match (&c.token_file, &c.data) {
                    (Some(f), _) => format!("token file {}", f.display()),
                    (None, Some(d)) => format!("admin token in {}", d.display()),
                    (None, None) => "no token (TOLLGATE_TOKEN)".into(),
                };
                println!(
                    "{mark} {name:<16} {:<32} {auth}",
                    c.addr.as_deref().unwrap_or(DEFAULT_ADDR)
                );
            }
            Ok(())
        }
        ContextCmd::Use { name } => {
            if !profile.contexts.contains_key(&name) {
                bail!("no context {name:?}; add it with `tollgate context set {name} --addr URL`");
            }
            profile.current = Some(name.clone());
            save(&profile)?;
            println!("current context: {name}");
            Ok(())
        }
        ContextCmd::Set {
            name,
            addr,
            token_file,
            data,
        } => {
            if let Some(a) = &addr {
                crate::client::check_addr(a)?;
            }
            let c = profile.contexts.entry(name.clone()).or_default();
            if addr.is_some() {
                c.addr = addr;
            }
            if token_file.is_some() {
                c.token_file = token_file;
            }
            if data.is_some() {
                c.data = data;
            }
            if profile.current.is_none() {
                profile.current = Some(name.clone());
            }
            let p = save(&profile)?;
            println!("context {name} saved in {}", p.display());
            Ok(())
        }
        ContextCmd::Delete { name } => {
            if profile.contexts.remove(&name).is_none() {
                bail!("no context {name:?}");
            }
            if profile.current.as_deref() == Some(name.as_str()) {
                profile.current = None;
            }
            save(&profile)?;
            println!("context {name} deleted");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        serde_yaml_ng::from_str(
            "current-context: local\ncontexts:\n  local:\n    addr: http://127.0.0.1:8181\n    data: /srv/tg\n  prod:\n    addr: https://tollgate.acme.test\n",
        )
        .unwrap()
    }

    #[test]
    fn flags_win_over_the_context_and_the_context_over_defaults() {
        let p = profile();
        let r = resolve(&p, None, None, None, None).unwrap();
        assert_eq!(
            (r.addr.as_str(), r.data.as_deref()),
            ("http://127.0.0.1:8181", Some(Path::new("/srv/tg")))
        );
        let r = resolve(&p, Some("prod"), None, Some("tga_x"), None).unwrap();
        assert_eq!(
            (r.addr.as_str(), r.token.as_deref(), r.data),
            ("https://tollgate.acme.test", Some("tga_x"), None)
        );
        let r = resolve(&p, Some("prod"), Some("http://other:1"), None, None).unwrap();
        assert_eq!(r.addr, "http://other:1");
        let r = resolve(&Profile::default(), None, None, None, None).unwrap();
        assert_eq!(
            (r.addr.as_str(), r.token, r.data),
            (DEFAULT_ADDR, None, None)
        );
        let e = resolve(&p, Some("staging"), None, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("staging") && e.contains("local, prod"), "{e}");
    }

    #[test]
    fn a_token_comes_from_the_contexts_file_and_a_profile_rejects_inline_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("prod.token");
        std::fs::write(&f, "tgr_key\n").unwrap();
        let mut p = profile();
        p.contexts.get_mut("prod").unwrap().token_file = Some(f);
        assert_eq!(
            resolve(&p, Some("prod"), None, None, None)
                .unwrap()
                .token
                .as_deref(),
            Some("tgr_key")
        );
        let inline: Result<Profile, _> =
            serde_yaml_ng::from_str("contexts:\n  x:\n    token: tga_secret\n");
        assert!(inline.is_err());
    }
}
