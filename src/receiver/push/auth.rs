//! The `Authorization` header of a receiver's pushes (SPEC §4.5, §6): bearer token, `<type>
//! <credentials>`, basic auth or an OAuth2 token ([`crate::net::oauth2`], fetched and cached
//! for the receiver), the single method the configuration allows.
//!
//! Credential files (`bearer_token_file`, `credentials_file`, `password_file`) are re-read when
//! their modification time or size changes, so rotated tokens keep working; the check is one
//! `stat` per request, small enough to do inline.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use base64::Engine as _;
use http::header::HeaderValue;

use crate::config::{Auth, Credential, Secret};
use crate::net::oauth2::TokenSource;

use super::{ClientError, PushError};

/// The `Authorization` header of every request.
pub(super) enum AuthHeader {
    None,
    /// `<prefix><credential>`: `Bearer …` or `<type> …`.
    Prefixed {
        prefix: String,
        credential: Source,
    },
    Basic {
        username: String,
        password: Source,
    },
    OAuth2(TokenSource),
}

/// A secret given inline or read from a file (re-read when it changes).
pub(super) enum Source {
    Inline(Secret),
    File(WatchedFile),
}

impl Source {
    fn from_credential(c: &Credential) -> Source {
        match c {
            Credential::Inline(s) => Source::Inline(s.clone()),
            Credential::File(p) => Source::File(WatchedFile::new(p.clone())),
        }
    }

    fn read(&self) -> Result<String, PushError> {
        match self {
            Source::Inline(s) => Ok(s.expose().to_owned()),
            Source::File(f) => f.read().map_err(|source| PushError::Credentials {
                path: f.path.clone(),
                source,
            }),
        }
    }
}

impl AuthHeader {
    /// The header of receiver `name` (which names its `oauth2` settings in errors and metrics).
    pub(super) fn new(name: &str, auth: &Auth) -> Result<AuthHeader, ClientError> {
        Ok(match auth {
            Auth::None => AuthHeader::None,
            Auth::BearerToken(token) => AuthHeader::Prefixed {
                prefix: "Bearer ".into(),
                credential: Source::Inline(token.clone()),
            },
            Auth::BearerTokenFile(path) => AuthHeader::Prefixed {
                prefix: "Bearer ".into(),
                credential: Source::File(WatchedFile::new(path.clone())),
            },
            Auth::Authorization { kind, credentials } => AuthHeader::Prefixed {
                prefix: format!("{kind} "),
                credential: Source::from_credential(credentials),
            },
            Auth::Basic { username, password } => AuthHeader::Basic {
                username: username.clone(),
                password: Source::from_credential(password),
            },
            Auth::OAuth2(oauth2) => AuthHeader::OAuth2(TokenSource::new(
                &format!("loki.{name}.oauth2"),
                &format!("loki.{name}"),
                oauth2,
            )?),
        })
    }

    pub(super) async fn value(&self) -> Result<Option<HeaderValue>, PushError> {
        let text = match self {
            AuthHeader::None => return Ok(None),
            AuthHeader::OAuth2(source) => {
                return source
                    .header()
                    .await
                    .map(Some)
                    .map_err(|e| PushError::Token(e.to_string()));
            }
            AuthHeader::Prefixed { prefix, credential } => {
                format!("{prefix}{}", credential.read()?)
            }
            AuthHeader::Basic { username, password } => {
                let pair = format!("{username}:{}", password.read()?);
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
        };
        let mut value = HeaderValue::from_str(&text).map_err(|_| {
            PushError::Transport(
                "the credentials contain characters not allowed in a header".into(),
            )
        })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

/// A credential file and its last content, re-read when its modification time or size changes.
pub(super) struct WatchedFile {
    path: PathBuf,
    cache: Mutex<Option<(SystemTime, u64, String)>>,
}

impl WatchedFile {
    fn new(path: PathBuf) -> WatchedFile {
        WatchedFile {
            path,
            cache: Mutex::new(None),
        }
    }

    fn read(&self) -> std::io::Result<String> {
        let meta = std::fs::metadata(&self.path)?;
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((m, len, text)) = cache.as_ref()
            && *m == modified
            && *len == meta.len()
        {
            return Ok(text.clone());
        }
        let text = std::fs::read_to_string(&self.path)?.trim().to_owned();
        *cache = Some((modified, meta.len(), text.clone()));
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn authorization_headers() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "one\n").unwrap();
        let value = async |auth: &Auth| {
            AuthHeader::new("a", auth)
                .unwrap()
                .value()
                .await
                .unwrap()
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(value(&Auth::None).await, None);
        assert_eq!(
            value(&Auth::BearerToken(Secret("t".into())))
                .await
                .as_deref(),
            Some("Bearer t")
        );
        assert_eq!(
            value(&Auth::Basic {
                username: "user".into(),
                password: Credential::Inline(Secret("pass".into())),
            })
            .await
            .as_deref(),
            Some("Basic dXNlcjpwYXNz")
        );
        assert_eq!(
            value(&Auth::Authorization {
                kind: "Token".into(),
                credentials: Credential::File(file.clone()),
            })
            .await
            .as_deref(),
            Some("Token one")
        );
        // A rotated token file is re-read.
        let header = AuthHeader::new("a", &Auth::BearerTokenFile(file.clone())).unwrap();
        assert_eq!(header.value().await.unwrap().unwrap(), "Bearer one");
        std::fs::write(&file, "rotated-two\n").unwrap();
        assert_eq!(header.value().await.unwrap().unwrap(), "Bearer rotated-two");
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(
            header.value().await,
            Err(PushError::Credentials { .. })
        ));
    }
}
