//! Where the CLI finds rdev and its key: flags, then environment variables
//! (both via clap), then a profile of the config file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The URL used when nothing else names one.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// A secret that never shows up in `Debug` output.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// The secret itself, for the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL without a trailing slash.
    pub url: String,
    /// Bearer key, when one is configured.
    pub api_key: Option<ApiKey>,
    /// The profile's default project (`rdev mcp`).
    pub project: Option<String>,
}

/// `config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Profile used when none is asked for.
    pub default_profile: Option<String>,
    /// Named profiles.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// One `[profiles.NAME]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Base URL.
    pub url: Option<String>,
    /// API key.
    pub api_key: Option<String>,
    /// Default project of `rdev mcp`.
    pub project: Option<String>,
}

/// Configuration that cannot be used; a usage error.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read or parsed.
    #[error("cannot read {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A profile was named that the file lacks.
    #[error("no profile `{name}` in {path}")]
    NoProfile {
        /// The profile.
        name: String,
        /// The file looked at.
        path: PathBuf,
    },
}

/// `$XDG_CONFIG_HOME/rdev/config.toml`, else `~/.config/rdev/config.toml`.
pub fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("rdev").join("config.toml"))
}

/// Reads the config file; a missing file is an empty configuration.
pub fn load_file(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(e) => {
            return Err(ConfigError::File {
                path: path.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Combines flag/env values (already merged by clap) with the file's profile:
/// flag > env > profile > default.
pub fn resolve(
    url: Option<String>,
    api_key: Option<String>,
    profile: Option<&str>,
    file: &ConfigFile,
    path: &Path,
) -> Result<Settings, ConfigError> {
    let chosen =
        match profile {
            Some(name) => {
                Some(
                    file.profiles
                        .get(name)
                        .cloned()
                        .ok_or_else(|| ConfigError::NoProfile {
                            name: name.to_owned(),
                            path: path.to_owned(),
                        })?,
                )
            }
            None => match &file.default_profile {
                Some(name) => Some(file.profiles.get(name).cloned().ok_or_else(|| {
                    ConfigError::NoProfile {
                        name: name.to_owned(),
                        path: path.to_owned(),
                    }
                })?),
                None => None,
            },
        }
        .unwrap_or_default();
    let url = url
        .filter(|u| !u.is_empty())
        .or(chosen.url)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let api_key = api_key
        .filter(|k| !k.is_empty())
        .or(chosen.api_key)
        .map(ApiKey);
    Ok(Settings {
        url: url.trim_end_matches('/').to_owned(),
        api_key,
        project: chosen.project,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> ConfigFile {
        toml::from_str(
            r#"
            default_profile = "dev"
            [profiles.dev]
            url = "http://dev:8080/"
            api_key = "rdev_dev"
            [profiles.prod]
            url = "https://prod"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn flags_and_env_win_over_the_profile() {
        let s = resolve(
            Some("http://flag".into()),
            Some("rdev_flag".into()),
            None,
            &file(),
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(s.url, "http://flag");
        assert_eq!(s.api_key.unwrap().expose(), "rdev_flag");
    }

    #[test]
    fn default_profile_fills_what_is_missing() {
        let s = resolve(None, None, None, &file(), Path::new("c")).unwrap();
        assert_eq!(s.url, "http://dev:8080");
        assert_eq!(s.api_key.unwrap().expose(), "rdev_dev");
    }

    #[test]
    fn named_profile_is_used_and_missing_one_is_an_error() {
        let s = resolve(None, None, Some("prod"), &file(), Path::new("c")).unwrap();
        assert_eq!(s.url, "https://prod");
        assert!(s.api_key.is_none());
        assert!(resolve(None, None, Some("nope"), &file(), Path::new("c")).is_err());
    }

    #[test]
    fn no_file_means_the_local_default() {
        let s = resolve(None, None, None, &ConfigFile::default(), Path::new("c")).unwrap();
        assert_eq!(s.url, DEFAULT_URL);
    }

    #[test]
    fn key_is_redacted_in_debug() {
        assert!(!format!("{:?}", ApiKey("rdev_secret".into())).contains("secret"));
    }
}
