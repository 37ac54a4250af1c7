//! API token authentication (`Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET`).
//!
//! The secret never appears in `Debug`, `Display` or logs, and the header value is marked
//! sensitive so HTTP-level tracing redacts it too.

use std::fmt;
use std::path::Path;

use reqwest::header::HeaderValue;

use crate::error::Error;

/// A PVE API token: the token id `user@realm!tokenid` and its secret.
#[derive(Clone)]
pub struct ApiToken {
    token_id: String,
    secret: String,
}

impl ApiToken {
    /// Builds a token from its id (`user@realm!tokenid`) and secret.
    pub fn new(token_id: impl Into<String>, secret: impl Into<String>) -> Result<Self, Error> {
        let token_id = token_id.into();
        let secret = secret.into();
        validate_token_id(&token_id)?;
        if secret.is_empty() {
            return Err(Error::config(
                format!("api token {token_id}"),
                "the secret is empty",
            ));
        }
        // PVE splits `id=secret` at the last '='; it must not contain one, nor anything that
        // cannot go into a header.
        if secret
            .chars()
            .any(|c| c == '=' || c == ';' || c.is_whitespace() || c.is_control() || !c.is_ascii())
        {
            return Err(Error::config(
                format!("api token {token_id}"),
                "the secret contains characters that cannot be sent (whitespace, '=', ';' or non-ascii)",
            ));
        }
        Ok(ApiToken { token_id, secret })
    }

    /// Reads the secret from a file (e.g. a systemd credential), trimming one trailing newline
    /// and surrounding whitespace.
    pub fn from_secret_file(token_id: impl Into<String>, path: &Path) -> Result<Self, Error> {
        let token_id = token_id.into();
        let ctx = || format!("reading the api token secret from {}", path.display());
        let raw = crate::local_file::read_regular(path, crate::local_file::MAX_SECRET_BYTES)
            .map_err(|e| Error::config(ctx(), e.to_string()))?;
        let raw = String::from_utf8(raw)
            .map_err(|_| Error::config(ctx(), "the secret is not text (binary data)"))?;
        Self::new(token_id, raw.trim())
    }

    /// `user@realm!tokenid`; safe to log.
    pub fn token_id(&self) -> &str {
        &self.token_id
    }

    /// The `Authorization` header value, marked sensitive.
    pub(crate) fn header_value(&self) -> Result<HeaderValue, Error> {
        let mut v =
            HeaderValue::from_str(&format!("PVEAPIToken={}={}", self.token_id, self.secret))
                .map_err(|_| {
                    Error::config(
                        format!("api token {}", self.token_id),
                        "cannot be sent as an http header",
                    )
                })?;
        v.set_sensitive(true);
        Ok(v)
    }
}

fn validate_token_id(id: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Err(Error::config(
            format!("api token id {id:?}"),
            why.to_owned(),
        ))
    };
    let Some((user_realm, token)) = id.split_once('!') else {
        return bad("must look like user@realm!tokenid");
    };
    let Some((user, realm)) = user_realm.rsplit_once('@') else {
        return bad("must look like user@realm!tokenid");
    };
    if user.is_empty() || realm.is_empty() || token.is_empty() {
        return bad("must look like user@realm!tokenid");
    }
    if id
        .chars()
        .any(|c| c == '=' || c == ';' || c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return bad("contains whitespace, '=', ';' or non-ascii characters");
    }
    Ok(())
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("token_id", &self.token_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SECRET: &str = "0b3c6c2e-6a4b-4c3e-9a43-1f2d3e4f5a6b";

    #[test]
    fn header_and_redaction() {
        let t = ApiToken::new("drover@pve!agent", SECRET).unwrap();
        let h = t.header_value().unwrap();
        assert!(h.is_sensitive());
        assert_eq!(
            h.to_str().unwrap(),
            format!("PVEAPIToken=drover@pve!agent={SECRET}")
        );
        let dbg = format!("{t:?}");
        assert!(!dbg.contains(SECRET) && dbg.contains("<redacted>"), "{dbg}");
    }

    #[test]
    fn secret_file_trims_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, format!("{SECRET}\n")).unwrap();
        let t = ApiToken::from_secret_file("drover@pve!agent", &p).unwrap();
        assert_eq!(t.secret, SECRET);
        let e = ApiToken::from_secret_file("drover@pve!agent", &dir.path().join("missing"))
            .unwrap_err();
        assert!(
            e.to_string().contains("reading the api token secret"),
            "{e}"
        );
        assert!(!e.to_string().contains(SECRET));
    }

    #[test]
    fn rejects_malformed_ids_and_secrets() {
        for id in [
            "drover@pve",
            "drover!agent",
            "@pve!agent",
            "a@b!",
            "a b@pve!x",
            "a@pve!x=y",
        ] {
            assert!(ApiToken::new(id, SECRET).is_err(), "{id}");
        }
        for s in ["", "a b", "a=b", "a\nb", "é"] {
            let e = ApiToken::new("drover@pve!agent", s).unwrap_err();
            assert!(s.is_empty() || !e.to_string().contains(s), "{e}");
        }
    }
}
