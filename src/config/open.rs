//! Where a process reads its users and rules: a DynamoDB table, a TOML file,
//! or (for `serve` alone) the demo config. Both entry points choose here, and
//! open what they chose here.

use std::path::PathBuf;
use std::sync::Arc;

use aws_config::SdkConfig;

use super::source::{CacheSettings, CachedTable, ConfigStore, FileStore};
use super::table::TableStore;
use super::{ConfigError, Policy};

/// The demo config: `user0` / `secret0` may publish to any topic not starting
/// with `$` (`#` does not match those) or under `replies/` (devices answer
/// there), and so may a device with a verified certificate; both may wait for
/// replies on their default response topics; the try-it page of
/// `serve --admin-listen 127.0.0.1:9090` may call it.
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

/// Which entry point chooses: each has its own rule for a table and a file named together, or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// `serve`: `--config-table` or `--config`, not both; neither runs the demo config.
    Serve,
    /// The Lambda function: `CONFIG_TABLE` takes precedence over `CONFIG_FILE`; neither is an error.
    Lambda,
}

/// Where the config comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// The DynamoDB config table of this name.
    Table(String),
    /// A TOML file.
    File(PathBuf),
    /// The demo config ([`DEMO_CONFIG`]), for `serve` without a config.
    Demo,
}

/// Why no config can be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `serve` was given a file and a table.
    #[error("--config and --config-table (or CONFIG_TABLE) exclude each other: give a file or a table")]
    Both,
    /// The Lambda function was given neither.
    #[error("neither CONFIG_TABLE nor CONFIG_FILE is set: name the config of users and rules")]
    Neither,
    /// The file is refused; the message names the entry.
    #[error("{}: {source}", path.display())]
    Refused {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: ConfigError,
    },
    /// A table needs an AWS region to be found in.
    #[error("the config table needs an AWS region: set AWS_REGION")]
    NoRegion,
}

impl ConfigSource {
    /// What `entry` reads, given a table's name and a file's path (an empty name is none).
    pub fn choose(entry: EntryPoint, table: Option<String>, file: Option<PathBuf>) -> Result<ConfigSource, OpenError> {
        let table = table.filter(|name| !name.is_empty());
        match (entry, table, file) {
            (EntryPoint::Serve, Some(_), Some(_)) => Err(OpenError::Both),
            (_, Some(table), _) => Ok(ConfigSource::Table(table)),
            (_, None, Some(file)) => Ok(ConfigSource::File(file)),
            (EntryPoint::Serve, None, None) => Ok(ConfigSource::Demo),
            (EntryPoint::Lambda, None, None) => Err(OpenError::Neither),
        }
    }

    /// Opens it: a file is read and validated now; a table is only named, its
    /// entries read on first use through the caches (`sdk` finds it; one is
    /// built from the environment if none is given).
    pub async fn open(self, sdk: Option<&SdkConfig>) -> Result<Config, OpenError> {
        match self {
            ConfigSource::File(path) => match FileStore::load(path.clone()) {
                Ok(file) => Ok(Config::File(Arc::new(file))),
                Err(source) => Err(OpenError::Refused { path, source }),
            },
            ConfigSource::Demo => {
                let demo = Policy::from_toml(DEMO_CONFIG).expect("the demo config is valid");
                Ok(Config::File(Arc::new(FileStore::new(demo))))
            }
            ConfigSource::Table(name) => {
                let built;
                let sdk = match sdk {
                    Some(sdk) => sdk,
                    None => {
                        built = crate::aws::sdk_config().await;
                        &built
                    }
                };
                if sdk.region().is_none() {
                    return Err(OpenError::NoRegion);
                }
                let table = TableStore::new(sdk, &name);
                let cached = Arc::new(CachedTable::new(table.clone(), CacheSettings::from_env()));
                Ok(Config::Table { cached, table })
            }
        }
    }
}

/// A config, opened.
pub enum Config {
    /// A file (or the demo) in memory, reloaded on demand.
    File(Arc<FileStore>),
    /// The table behind its caches.
    Table {
        /// The caches requests read.
        cached: Arc<CachedTable>,
        /// The table itself, whose client the `Idempotency-Key` records share.
        table: TableStore,
    },
}

impl Config {
    /// The store requests read.
    pub fn store(&self) -> Arc<dyn ConfigStore> {
        match self {
            Config::File(file) => Arc::clone(file) as Arc<dyn ConfigStore>,
            Config::Table { cached, .. } => Arc::clone(cached) as Arc<dyn ConfigStore>,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_entry_point_chooses_by_its_own_rule() {
        let (table, file) = (|| Some("t".to_owned()), || Some(PathBuf::from("f.toml")));
        let choose = ConfigSource::choose;
        assert!(matches!(choose(EntryPoint::Serve, table(), file()), Err(OpenError::Both)));
        assert_eq!(choose(EntryPoint::Lambda, table(), file()).unwrap(), ConfigSource::Table("t".into()));
        for entry in [EntryPoint::Serve, EntryPoint::Lambda] {
            assert_eq!(choose(entry, None, file()).unwrap(), ConfigSource::File("f.toml".into()));
            assert_eq!(choose(entry, Some(String::new()), file()).unwrap(), ConfigSource::File("f.toml".into()));
            assert_eq!(choose(entry, table(), None).unwrap(), ConfigSource::Table("t".into()));
        }
        assert_eq!(choose(EntryPoint::Serve, Some(String::new()), None).unwrap(), ConfigSource::Demo);
        assert!(matches!(choose(EntryPoint::Lambda, Some(String::new()), None), Err(OpenError::Neither)));
    }

    #[test]
    fn the_demo_config_allows_user0_everywhere_but_dollar_topics() {
        let policy = Policy::from_toml(DEMO_CONFIG).unwrap();
        assert!(policy.users["user0"].verify(b"secret0"));
        assert!(DEMO_CONFIG.contains(crate::config::DEMO_PASSWORD_HASH), "config push must know it as the demo's");
    }
}
