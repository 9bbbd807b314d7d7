//! [`load`]: the layered configuration (defaults, the TOML file, `KEEPTYPING__*` overrides),
//! validated, with its secrets resolved.

use std::collections::HashMap;
use std::path::Path;

use super::{Config, ConfigError, ENV_PREFIX, Settings};

/// Loads the settings from defaults, `file` and the `KEEPTYPING__*` entries of `env`, validates
/// them and resolves the secrets they name. `env` is passed in (rather than read here) so tests
/// can supply their own environment.
///
/// # Errors
/// [`ConfigError`] naming the first key that is unreadable, invalid or names a missing secret.
pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
    let defaults =
        ::config::Config::try_from(&Settings::default()).map_err(|e| ConfigError::Load(format!("defaults: {e}")))?;
    let mut builder = ::config::Config::builder().add_source(defaults);
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::Load(format!("file {} does not exist", path.display())));
        }
        builder = builder.add_source(::config::File::from(path).format(::config::FileFormat::Toml));
    }
    let overrides: ::config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    builder = builder.add_source(
        ::config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(overrides)),
    );
    let settings: Settings = builder.build().and_then(::config::Config::try_deserialize).map_err(|e| {
        let message = e.to_string().replace('\n', " ");
        // A value its type refused (see `values`): the same line as any other refusal.
        match super::values::key_and_problem(&message) {
            Some((key, problem)) => ConfigError::Invalid { key, problem },
            None => ConfigError::Load(message),
        }
    })?;
    settings.validate()?;
    let secrets = settings.resolve_secrets(env)?;
    Ok(Config { settings, secrets })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::super::test_support::{default_toml, env};
    use super::*;

    #[test]
    fn default_toml_parses_to_the_defaults() {
        let cfg = load(Some(&default_toml()), &HashMap::new()).unwrap();
        assert_eq!(cfg.settings, Settings::default());
    }

    #[test]
    fn default_toml_documents_every_key() {
        let text = std::fs::read_to_string(default_toml()).unwrap();
        let written: toml::Table = toml::from_str(&text).unwrap();
        let defaults: toml::Table = toml::from_str(&toml::to_string(&Settings::default()).unwrap()).unwrap();
        for (section, table) in &defaults {
            let Some(table) = table.as_table() else {
                continue;
            };
            for (key, value) in table {
                if value.is_table() {
                    for sub in value.as_table().unwrap().keys() {
                        assert!(
                            written[section][key].get(sub).is_some(),
                            "{section}.{key}.{sub} missing from config/default.toml"
                        );
                    }
                } else {
                    let doc = written.get(section).and_then(|t| t.get(key));
                    assert!(doc.is_some(), "{section}.{key} missing from config/default.toml");
                }
            }
        }
    }

    #[test]
    fn env_overrides_win_over_the_file() {
        let e = env(&[
            ("KEEPTYPING__ENGINE__IDLE_TIMEOUT", "45s"),
            ("KEEPTYPING__PLATFORMS__ONLYFANS__REFIRE_INTERVAL", "3s"),
            ("KEEPTYPING__ENGINE__MAX_SESSIONS", "7"),
            ("KEEPTYPING__HOOKS__ALLOW_UNAUTHENTICATED", "true"),
        ]);
        let cfg = load(Some(&default_toml()), &e).unwrap();
        assert_eq!(cfg.settings.engine.idle_timeout, Duration::from_secs(45));
        assert_eq!(cfg.settings.platforms.onlyfans.refire_interval, Duration::from_secs(3));
        assert_eq!(cfg.settings.engine.max_sessions.get(), 7);
        assert!(cfg.settings.hooks.allow_unauthenticated);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("kt-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("typo.toml");
        std::fs::write(&path, "[engine]\nidle_timout = \"3s\"\n").unwrap();
        let err = load(Some(&path), &HashMap::new()).unwrap_err().to_string();
        assert!(err.contains("idle_timout"), "{err}");
    }
}
