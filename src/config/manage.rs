//! What the command line does to a config, in either home: check, push,
//! pull, set or remove one user, and import a Mosquitto password file.
//!
//! A file is edited in place with its comments kept; a table is written in
//! batches. Nothing is written that would not load: every change is validated
//! first, as the service would validate it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml_edit::{value, ArrayOfTables, DocumentMut, Item as TomlItem, Table};

use super::table::{config_from_items, config_items, describe, user_item, user_key, Item, TableStore};
use super::{parse_toml, read_file, validate_user, ConfigError, ConfigFile, Policy, UserEntry, DEMO_PASSWORD_HASH};
use crate::auth::hash_argon2id;
use crate::store::StoreError;

/// Why a command changed nothing, or stopped: each message names the file, line,
/// user or item at fault.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// A config that does not load, or a user entry that would not.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The file to push does not load.
    #[error("{}: {source}", file.display())]
    Refused {
        /// The file.
        file: PathBuf,
        /// Why.
        source: ConfigError,
    },
    /// The table could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A push to a table would give the public demo user access to a live API.
    #[error(
        "{}: user {username:?} has the demo password hash of config/example.toml, whose password \
         the README prints; a table serves a live API, so nothing was written. Remove that \
         user or give it a password of its own (mqtt-http-publish user set {username} --file {}), \
         or pass --allow-demo-user for a throwaway test stack",
        file.display(),
        file.display()
    )]
    DemoUser {
        /// The file to push.
        file: PathBuf,
        /// The user holding the demo hash.
        username: String,
    },
    /// `user remove` of a user that is not there.
    #[error("there is no user {username:?} in {home}")]
    NoSuchUser {
        /// The user.
        username: String,
        /// `table NAME` or the file's path.
        home: String,
    },
    /// A file could not be read, written or replaced.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// `read`, `write` or `replace`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file to edit in place is not TOML.
    #[error("{}: {source}", path.display())]
    NotToml {
        /// The file.
        path: PathBuf,
        /// Where and why.
        source: toml_edit::TomlError,
    },
    /// A file's `users` is something else than `[[users]]` tables.
    #[error("`users` in the file is not an array of [[users]] tables")]
    UsersNotTables,
    /// An edit that would leave the file refused when it loads.
    #[error("the edit would break {}: {source}", path.display())]
    BrokenEdit {
        /// The file.
        path: PathBuf,
        /// What would be refused.
        source: ConfigError,
    },
    /// A line of a Mosquitto password file that is not `username:hash`.
    #[error("line {line}: not username:hash")]
    NotMosquittoLine {
        /// 1-based.
        line: usize,
    },
    /// A Mosquitto user whose hash is not one we verify.
    #[error("line {line}: {source}")]
    MosquittoUser {
        /// 1-based.
        line: usize,
        /// Why.
        source: ConfigError,
    },
    /// The config could not be written as TOML.
    #[error(transparent)]
    Toml(#[from] toml::ser::Error),
}

/// Where a command reads and writes the config.
pub enum Home {
    /// A DynamoDB table.
    Table(TableStore),
    /// A TOML file.
    File(PathBuf),
}

/// One difference between two configs, as `push` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `add`, `change` or `delete`.
    pub action: &'static str,
    /// `user NAME`, `rule PRIORITY` or `limits`.
    pub entry: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.action, self.entry)
    }
}

/// What turns `current` into `desired`: adds, changes, deletes, in key order.
pub fn diff(
    current: &BTreeMap<(String, String), Item>,
    desired: &BTreeMap<(String, String), Item>,
) -> (Vec<Change>, Vec<Item>, Vec<(String, String)>) {
    let mut changes = Vec::new();
    let mut puts = Vec::new();
    let mut deletes = Vec::new();
    for (key, item) in desired {
        match current.get(key) {
            None => changes.push(Change { action: "add", entry: describe(key) }),
            Some(existing) if existing != item => changes.push(Change { action: "change", entry: describe(key) }),
            Some(_) => continue,
        }
        puts.push(item.clone());
    }
    for key in current.keys().filter(|k| !desired.contains_key(*k)) {
        changes.push(Change { action: "delete", entry: describe(key) });
        deletes.push(key.clone());
    }
    (changes, puts, deletes)
}

fn read_target(path: &Path) -> Result<ConfigFile, ManageError> {
    if !path.exists() {
        return Ok(ConfigFile::default());
    }
    Ok(read_file(path)?)
}

impl Home {
    /// The config held here, users by name and rules by priority.
    pub async fn read(&self) -> Result<ConfigFile, ManageError> {
        match self {
            Home::Table(store) => Ok(config_from_items(&store.items().await?)?),
            Home::File(path) => {
                let mut config = read_target(path)?;
                config.users.sort_by(|a, b| a.username.cmp(&b.username));
                config.rules.sort_by_key(|r| r.priority);
                Ok(config)
            }
        }
    }

    /// Makes this home equal to the file `source`; returns what changed (or would, with `dry_run`).
    /// A table is refused a user with the public demo password unless `allow_demo_user`.
    pub async fn push(&self, source: &Path, dry_run: bool, allow_demo_user: bool) -> Result<Vec<Change>, ManageError> {
        Policy::load(source).map_err(|e| ManageError::Refused { file: source.to_owned(), source: e })?;
        let desired = read_file(source)?;
        if let (Home::Table(_), false) = (self, allow_demo_user) {
            if let Some(demo) = desired.users.iter().find(|u| u.password_hash == DEMO_PASSWORD_HASH) {
                return Err(ManageError::DemoUser { file: source.to_owned(), username: demo.username.clone() });
            }
        }
        let current = match self {
            Home::Table(store) => store.items().await?,
            Home::File(path) => config_items(&read_target(path)?),
        };
        let (changes, puts, deletes) = diff(&current, &config_items(&desired));
        if dry_run || changes.is_empty() {
            return Ok(changes);
        }
        match self {
            Home::Table(store) => store.write(puts, deletes).await?,
            Home::File(path) => {
                let text = std::fs::read_to_string(source).map_err(|e| io("read", source, e))?;
                write_atomically(path, &text)?;
            }
        }
        Ok(changes)
    }

    /// The config as TOML: what `pull` prints.
    pub async fn pull(&self) -> Result<String, ManageError> {
        Ok(toml::to_string(&self.read().await?)?)
    }

    /// Adds users or changes their hashes; returns what changed.
    pub async fn set_users(&self, users: &[UserEntry]) -> Result<Vec<Change>, ManageError> {
        for user in users {
            validate_user(user)?;
        }
        match self {
            Home::Table(store) => {
                let current = store.items().await?;
                let changes = users
                    .iter()
                    .map(|u| Change {
                        action: if current.contains_key(&user_key(&u.username)) { "change" } else { "add" },
                        entry: format!("user {}", u.username),
                    })
                    .collect();
                store.write(users.iter().map(user_item).collect(), Vec::new()).await?;
                Ok(changes)
            }
            Home::File(path) => edit_file(path, |doc| {
                let table = users_table(doc)?;
                let mut changes = Vec::new();
                for user in users {
                    let existing =
                        table.iter_mut().find(|t| t.get("username").and_then(|v| v.as_str()) == Some(&user.username));
                    let action = match existing {
                        Some(entry) => {
                            entry["password_hash"] = value(user.password_hash.as_str());
                            "change"
                        }
                        None => {
                            let mut entry = Table::new();
                            entry["username"] = value(user.username.as_str());
                            entry["password_hash"] = value(user.password_hash.as_str());
                            table.push(entry);
                            "add"
                        }
                    };
                    changes.push(Change { action, entry: format!("user {}", user.username) });
                }
                Ok(changes)
            }),
        }
    }

    /// Removes a user; an error if there is none.
    pub async fn remove_user(&self, username: &str) -> Result<Change, ManageError> {
        let change = Change { action: "delete", entry: format!("user {username}") };
        let missing = |home: String| ManageError::NoSuchUser { username: username.to_owned(), home };
        match self {
            Home::Table(store) => {
                if store.user(username).await?.is_none() {
                    return Err(missing(format!("table {}", store.table())));
                }
                store.write(Vec::new(), vec![user_key(username)]).await?;
                Ok(change)
            }
            Home::File(path) => edit_file(path, |doc| {
                let table = users_table(doc)?;
                let before = table.len();
                table.retain(|t| t.get("username").and_then(|v| v.as_str()) != Some(username));
                if table.len() == before {
                    return Err(missing(path.display().to_string()));
                }
                Ok(change)
            }),
        }
    }
}

/// A user entry with a fresh argon2id hash of `password`.
pub fn new_user(username: &str, password: &str) -> UserEntry {
    UserEntry { username: username.to_owned(), password_hash: hash_argon2id(password.as_bytes()) }
}

/// Reads a `mosquitto_passwd` file: `user:hash` lines (`$6$`, `$7$`, or a PHC
/// string such as argon2id). Blank lines and `#` comments are skipped; any
/// other line that does not verify as a hash we support is an error naming it.
pub fn import_mosquitto(text: &str) -> Result<Vec<UserEntry>, ManageError> {
    let mut users = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (username, hash) = line.split_once(':').ok_or(ManageError::NotMosquittoLine { line: number + 1 })?;
        let user = UserEntry { username: username.to_owned(), password_hash: hash.to_owned() };
        validate_user(&user).map_err(|source| ManageError::MosquittoUser { line: number + 1, source })?;
        users.push(user);
    }
    Ok(users)
}

fn users_table(doc: &mut DocumentMut) -> Result<&mut ArrayOfTables, ManageError> {
    doc.entry("users")
        .or_insert(TomlItem::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or(ManageError::UsersNotTables)
}

/// Edits a TOML file in place, keeping its comments; refuses a result that would not load.
fn edit_file<T>(path: &Path, edit: impl FnOnce(&mut DocumentMut) -> Result<T, ManageError>) -> Result<T, ManageError> {
    let text =
        if path.exists() { std::fs::read_to_string(path).map_err(|e| io("read", path, e))? } else { String::new() };
    let mut doc: DocumentMut = text.parse().map_err(|source| ManageError::NotToml { path: path.to_owned(), source })?;
    let result = edit(&mut doc)?;
    let edited = doc.to_string();
    parse_toml(&edited)
        .and_then(Policy::from_file)
        .map_err(|source| ManageError::BrokenEdit { path: path.to_owned(), source })?;
    write_atomically(path, &edited)?;
    Ok(result)
}

fn write_atomically(path: &Path, text: &str) -> Result<(), ManageError> {
    let temporary = path.with_extension("toml.tmp");
    std::fs::write(&temporary, text).map_err(|e| io("write", &temporary, e))?;
    std::fs::rename(&temporary, path).map_err(|e| io("replace", path, e))
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> ManageError {
    ManageError::Io { action, path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("mhp-manage-{}-{name}", std::process::id()))
    }

    #[tokio::test]
    async fn user_set_and_remove_edit_a_file_keeping_its_comments() {
        let path = temp("users.toml");
        std::fs::write(&path, include_str!("../../config/example.toml")).unwrap();
        let home = Home::File(path.clone());
        let changes = home.set_users(&[new_user("dev1", "pw1")]).await.unwrap();
        assert_eq!(changes[0].to_string(), "add user dev1");
        let changes = home.set_users(&[new_user("user0", "changed")]).await.unwrap();
        assert_eq!(changes[0].to_string(), "change user user0");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# [[rules]]: the ACL"), "comments survive");
        let policy = Policy::from_toml(&text).unwrap();
        assert!(policy.users["user0"].verify(b"changed") && policy.users["dev1"].verify(b"pw1"));
        assert_eq!(home.remove_user("dev1").await.unwrap().to_string(), "delete user dev1");
        assert!(home.remove_user("dev1").await.unwrap_err().to_string().contains("no user"));
        std::fs::remove_file(path).unwrap();
    }

    #[tokio::test]
    async fn push_to_a_file_reports_the_diff_and_then_nothing() {
        let (source, target) = (temp("source.toml"), temp("target.toml"));
        std::fs::write(&source, include_str!("../../config/example.toml")).unwrap();
        let home = Home::File(target.clone());
        let changes: Vec<String> =
            home.push(&source, true, false).await.unwrap().iter().map(|c| c.to_string()).collect();
        assert_eq!(
            changes,
            ["add cors", "add rule 10", "add rule 20", "add rule 30", "add rule 40", "add user user0"],
            "absent limits are the defaults"
        );
        assert!(!target.exists(), "a dry run writes nothing");
        home.push(&source, false, false).await.unwrap();
        assert!(home.push(&source, false, false).await.unwrap().is_empty(), "a second push changes nothing");
        std::fs::remove_file(source).unwrap();
        std::fs::remove_file(target).unwrap();
    }

    #[test]
    fn mosquitto_lines_are_imported_and_bad_lines_named() {
        let users = import_mosquitto(
            "# a comment\n\nu6:$6$fx1fsGY4/jC2GxIS$bJ0Mbzv4L7+xm8xDj0oX0zpH/2bw5rw+IEMu6iD/FSAUV4tX/ZAmFk1/7s/OSpLL4/SZCZNQSYBKMa1LLrYQiw==\n",
        )
        .unwrap();
        assert_eq!(users[0].username, "u6");
        assert!(import_mosquitto("plain:secret\n").unwrap_err().to_string().starts_with("line 1: user \"plain\""));
        assert!(import_mosquitto("nocolon\n").unwrap_err().to_string().contains("line 1"));
    }
}
