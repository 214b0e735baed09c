//! Loading a configuration the way every process does: the pure loader
//! ([`Config::load`]), then the API key files it names (`key_file` in `[[auth.keys]]`, and
//! `secret_file` in `[[rooms]]`),
//! read here because reading a file is I/O the configuration layer must not do. The master
//! reads them at start and on every reload, `check-config` reads them to report a file that
//! cannot be read, and each worker reads them when it starts; so a rotated key takes effect
//! with a reload, as any other setting.

use std::io::Read;
use std::path::Path;

use crate::config::{Config, ConfigError, MAX_KEY_FILE_BYTES};

/// Loads the configuration of `file_text` and `env` and reads its key files. Returns every
/// problem: those of the text and the variables first (the files are read only once they
/// are settled), then every file that cannot be read or holds no valid key.
pub fn load(file_text: Option<&str>, env: &[(String, String)]) -> Result<Config, Vec<ConfigError>> {
    let mut config = Config::load(file_text, env)?;
    let mut problems = Vec::new();
    for file in std::mem::take(&mut config.auth.key_files) {
        let added = match read(&file.path) {
            Ok(text) => config.auth.add_file_key(&file, &text),
            Err(reason) => Err(ConfigError::Invalid { key: file.setting.clone(), reason }),
        };
        problems.extend(added.err());
    }
    // Waiting rooms' `secret_file`s, read the same way.
    for room in &mut config.rooms {
        let Some(file) = room.secret_file.clone() else { continue };
        let set = match read(&file.path) {
            Ok(text) => room.set_file_secret(&text),
            Err(reason) => Err(ConfigError::Invalid { key: file.setting.clone(), reason }),
        };
        problems.extend(set.err());
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

/// The text of a key file, at most [`MAX_KEY_FILE_BYTES`]; the error names the path.
fn read(path: &Path) -> Result<String, String> {
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    // A directory, a device or a pipe is a mistake, and a pipe could block the start.
    if !std::fs::metadata(path).map_err(cannot)?.is_file() {
        return Err(format!("{} is not a regular file: not a key", path.display()));
    }
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(format!("{} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key", path.display()));
    }
    String::from_utf8(bytes).map_err(|_| format!("{} is not text: not a key", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn keyed(key_file: &str) -> String {
        format!("[[auth.keys]]\nkey_file = {key_file:?}\nrole = \"lock\"\nprefix = \"team-a:\"\n")
    }

    #[test]
    fn a_key_file_adds_its_trimmed_key_with_its_role_and_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "s3cret-from-a-file\n").unwrap();
        let config = load(Some(&keyed(path.to_str().unwrap())), &[]).unwrap();
        assert_eq!(config.auth.keys.len(), 1);
        let key = &config.auth.keys[0];
        assert_eq!((key.key.as_str(), key.role, key.prefix.as_str()), ("s3cret-from-a-file", Role::Lock, "team-a:"));
        assert!(config.auth.key_files.is_empty(), "read, so nothing is left to read");
    }

    #[test]
    fn a_relative_key_file_is_read_from_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("leasehold-key"), "from-credentials").unwrap();
        let creds = env(&[("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())]);
        let config = load(Some(&keyed("leasehold-key")), &creds).unwrap();
        assert_eq!(config.auth.keys[0].key, "from-credentials");
    }

    #[test]
    fn an_unreadable_or_invalid_key_file_is_a_problem_naming_setting_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let problems = load(Some(&keyed(missing.to_str().unwrap())), &[]).unwrap_err();
        assert_eq!(problems.len(), 1);
        let text = problems[0].to_string();
        assert!(text.starts_with("auth.keys[0].key_file: cannot read "), "{text}");
        assert!(text.contains(missing.to_str().unwrap()), "{text}");
        // Too short to be a key; a directory; a file far too large: each reported, none read whole.
        let short = dir.path().join("short");
        std::fs::write(&short, "ab\n").unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'k'; 1 << 20]).unwrap();
        for (path, says) in
            [(&short, "4 to 256 printable"), (&dir.path().to_path_buf(), "not a regular file"), (&big, "larger")]
        {
            let problems = load(Some(&keyed(path.to_str().unwrap())), &[]).unwrap_err();
            let text = problems[0].to_string();
            assert!(text.starts_with("auth.keys[0].key_file: ") && text.contains(says), "{text}");
            assert!(text.contains(path.to_str().unwrap()), "{text}");
        }
    }

    #[test]
    fn a_key_file_key_may_not_repeat_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "the-same-key").unwrap();
        let text = format!("[[auth.keys]]\nkey = \"the-same-key\"\nrole = \"read\"\n{}", keyed(path.to_str().unwrap()));
        let problems = load(Some(&text), &[]).unwrap_err();
        assert!(problems[0].to_string().contains("configured twice"), "{:?}", problems);
    }
}
