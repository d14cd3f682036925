//! Secrets come from the environment or from systemd credentials, never
//! from manifests or the repository.

use std::path::Path;

/// The value of the environment variable `env`, else the file `credential`
/// in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`); trimmed, and
/// `None` when absent or empty.
pub fn read(env: &str, credential: &str) -> Option<String> {
    let from_env = std::env::var(env).ok().filter(|value| !value.trim().is_empty());
    from_env.map(|value| value.trim().to_owned()).or_else(|| read_credential(credential))
}

/// The systemd credential `name` (a file in `$CREDENTIALS_DIRECTORY`), trimmed; `None` when absent or empty.
pub fn read_credential(name: &str) -> Option<String> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let value = std::fs::read_to_string(Path::new(&dir).join(name)).ok()?;
    Some(value.trim().to_owned()).filter(|value| !value.is_empty())
}
