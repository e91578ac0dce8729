//! API bearer tokens. A token is shown once when created; only its SHA-256
//! is kept, in `<data-dir>/api-tokens` (mode 0600), one line per token:
//! `<sha256 hex> <scope> <created unix ms>`. The file is separate from sled so
//! that `eagate token create` works while a running gateway holds the store;
//! the gateway rereads it when it changes.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Scope {
    /// Everything: devices, signals, executions.
    Admin,
    /// The platform backend: publish signals and read executions.
    Platform,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Platform => "platform",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Self::Admin),
            "platform" => Some(Self::Platform),
            _ => None,
        }
    }
}

/// The token file's name in the data directory.
pub const TOKEN_FILE: &str = "api-tokens";

/// Creates a token with `scope`, records its hash in `data_dir`, and
/// returns the token text: the only time it exists outside its holder.
pub fn create_token(data_dir: &Path, scope: Scope) -> std::io::Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut bytes[..]).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token = Zeroizing::new(format!("eat_{}", hex(&bytes[..])));
    fs::create_dir_all(data_dir)?;
    let path = data_dir.join(TOKEN_FILE);
    let mut options = fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path)?;
    writeln!(
        file,
        "{} {} {}",
        token_sha256(&token),
        scope.as_str(),
        crate::clock::unix_ms()
    )?;
    file.sync_all()?;
    Ok(token)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What is kept of a bearer token (admin, platform or affiliate): its
/// SHA-256 as lower-case hex.
pub(crate) fn token_sha256(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// The tokens a gateway accepts, reloaded when the file changes.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

#[derive(Debug, Default)]
struct Loaded {
    modified: Option<SystemTime>,
    scopes: HashMap<String, Scope>,
}

impl TokenStore {
    /// The tokens of `data_dir` (none until one is created).
    pub fn open(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(TOKEN_FILE),
            loaded: Mutex::new(Loaded::default()),
        }
    }

    /// The scope of `token`, if it is a known token.
    pub fn scope_of(&self, token: &str) -> Option<Scope> {
        // Looked up by hash: the lookup's timing depends on the hash, not on
        // how much of a guessed token is right.
        self.scope_of_hash(&token_sha256(token))
    }

    /// The scope of the token whose SHA-256 (hex) is `hash`, if it is still
    /// a known token (a console session checks its token on every page).
    pub(crate) fn scope_of_hash(&self, hash: &str) -> Option<Scope> {
        let mut loaded = self.loaded.lock().expect("token lock");
        let modified = fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if modified != loaded.modified {
            loaded.scopes = fs::read_to_string(&self.path)
                .map(|text| parse(&text))
                .unwrap_or_default();
            loaded.modified = modified;
        }
        loaded.scopes.get(hash).copied()
    }
}

fn parse(text: &str) -> HashMap<String, Scope> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let hash = fields.next()?;
            let scope = Scope::parse(fields.next()?)?;
            Some((hash.to_owned(), scope))
        })
        .collect()
}
