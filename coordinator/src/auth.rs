//! Who may call the client API, and for what: `--tokens FILE`, one credential per line —
//! `sha256:<hex of the token> <scope>[,<scope>…] <name>` (only hashes at rest) or
//! `cert:<CN> <scopes> <name>` for a client certificate. Scopes: `read` (get, list, watch,
//! agents), `submit` (submit, rerun), `cancel`, `admin` (all). SIGHUP re-reads the file; a
//! removed credential stops working at once (its open watches close).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// What a credential allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Read,
    Submit,
    Cancel,
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        Some(match s {
            "read" => Scope::Read,
            "submit" => Scope::Submit,
            "cancel" => Scope::Cancel,
            "admin" => Scope::Admin,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Cancel => "cancel",
            Scope::Admin => "admin",
        }
    }
}

/// Who a credential belongs to, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    scopes: Vec<Scope>,
}

impl Principal {
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }
}

/// The credentials of a tokens file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    /// By the hex SHA-256 of the token.
    tokens: HashMap<String, Principal>,
    /// By a client certificate's common name.
    certs: HashMap<String, Principal>,
}

/// The hex SHA-256 of a token, as the file keeps it.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Tokens {
    /// Reads a tokens file's text; the error names the line and what is wrong with it.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut out = Tokens::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| format!("line {}: {why}: {line}", n + 1);
            let mut parts = line.split_whitespace();
            let (Some(cred), Some(scopes), Some(name), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(
                    "expected `sha256:<hex> <scopes> <name>` or `cert:<CN> <scopes> <name>`",
                ));
            };
            let scopes = scopes
                .split(',')
                .map(|s| {
                    Scope::parse(s).ok_or_else(|| {
                        bad(&format!(
                            "'{s}' is not a scope (read, submit, cancel, admin)"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let principal = Principal {
                name: name.to_string(),
                scopes,
            };
            if let Some(hex) = cred.strip_prefix("sha256:") {
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("a sha256: credential is 64 hex characters"));
                }
                out.tokens.insert(hex.to_ascii_lowercase(), principal);
            } else if let Some(cn) = cred.strip_prefix("cert:") {
                out.certs.insert(cn.to_string(), principal);
            } else {
                return Err(bad("a credential starts with sha256: or cert:"));
            }
        }
        Ok(out)
    }

    pub fn by_token(&self, token: &str) -> Option<&Principal> {
        self.tokens.get(&hash(token))
    }

    pub fn by_cert(&self, cn: &str) -> Option<&Principal> {
        self.certs.get(cn)
    }
}

/// The tokens file in use, re-read on demand; every re-read is announced (open watches check
/// their credential again).
#[derive(Debug)]
pub struct Auth {
    file: PathBuf,
    current: RwLock<Arc<Tokens>>,
    changed: watch::Sender<u64>,
}

fn load(file: &Path) -> Result<Tokens, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read --tokens {}: {e}", file.display()))?;
    Tokens::parse(&text).map_err(|e| format!("--tokens {}: {e}", file.display()))
}

impl Auth {
    pub fn new(file: PathBuf) -> Result<Auth, String> {
        let tokens = load(&file)?;
        Ok(Auth {
            file,
            current: RwLock::new(Arc::new(tokens)),
            changed: watch::channel(0).0,
        })
    }

    /// Reads the file again; on an error the credentials in use are kept.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = Arc::new(load(&self.file)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    pub fn tokens(&self) -> Arc<Tokens> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Changes with every re-read.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// `tokens add`: a new random token for `name` with `scopes`, its hash appended to `file`
/// (created 0600); returns the token, shown once.
pub fn add(file: &Path, name: &str, scopes: &str) -> Result<String, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    for s in scopes.split(',') {
        Scope::parse(s)
            .ok_or_else(|| format!("'{s}' is not a scope (read, submit, cancel, admin)"))?;
    }
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return Err(format!("'{name}' is not a name: one word"));
    }
    let bytes: [u8; 32] = rand::random();
    let token = format!(
        "fct_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let line = format!("sha256:{} {scopes} {name}\n", hash(&token));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokens_file_names_principals_and_their_scopes() {
        let text = format!(
            "# comment\nsha256:{} read,submit ci\ncert:ops admin ops-team\n",
            hash("secret")
        );
        let t = Tokens::parse(&text).unwrap();
        let ci = t.by_token("secret").unwrap();
        assert_eq!(ci.name, "ci");
        assert!(ci.may(Scope::Read) && ci.may(Scope::Submit) && !ci.may(Scope::Cancel));
        assert!(t.by_token("other").is_none());
        assert!(
            t.by_cert("ops").unwrap().may(Scope::Cancel),
            "admin may all"
        );
        let e = Tokens::parse("sha256:abc read x").unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
        let e = Tokens::parse(&format!("sha256:{} write x", hash("a"))).unwrap_err();
        assert!(e.contains("'write' is not a scope"), "{e}");
    }

    #[test]
    fn tokens_add_appends_a_hash_and_shows_the_token_once() {
        let dir = std::env::temp_dir().join(format!("factotum-tokens-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join("tokens");
        let _ = std::fs::remove_file(&file);
        let token = add(&file, "ci", "read").unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&token), "only the hash at rest");
        let t = Tokens::parse(&text).unwrap();
        assert_eq!(t.by_token(&token).unwrap().name, "ci");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(add(&file, "x", "root").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
