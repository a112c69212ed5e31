//! A token file: the token on its first line and, for a hub that serves TLS, the hub CA's
//! fingerprint on a `ca-sha256=` line, so the one file both authenticates and pins
//! (`DATA_DIR/admin.token`, `hubctl tokens create --out FILE`, `./.agentcom/admin.token`).

use crate::{Error, Fingerprint};

const CA_KEY: &str = "ca-sha256=";

#[derive(Clone, PartialEq, Eq)]
pub struct TokenFile {
    pub token: String,
    pub ca: Option<Fingerprint>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile").field("ca", &self.ca).finish_non_exhaustive()
    }
}

impl TokenFile {
    /// Parses a file's text; a token alone (the format before TLS, or a token pasted into a
    /// file) is fine.
    pub fn parse(text: &str) -> Result<TokenFile, Error> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
        let token = lines.next().unwrap_or_default().to_owned();
        let mut ca = None;
        for line in lines {
            match line.strip_prefix(CA_KEY) {
                Some(hex) => ca = Some(Fingerprint::parse(hex)?),
                None => {
                    return Err(Error::JoinToken(format!(
                        "a token file has the token, then `{CA_KEY}HEX`; not {line:?}"
                    )));
                }
            }
        }
        Ok(TokenFile { token, ca })
    }

    pub fn render(&self) -> String {
        match &self.ca {
            Some(ca) => format!("{}\n{CA_KEY}{ca}\n", self.token),
            None => format!("{}\n", self.token),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_round_trips_with_and_without_a_pin() {
        let pinned = TokenFile { token: "agentcom_admin_abc".into(), ca: Some(Fingerprint::of(b"ca")) };
        assert_eq!(TokenFile::parse(&pinned.render()).unwrap(), pinned);
        let bare = TokenFile::parse("agentcom_admin_abc\n").unwrap();
        assert_eq!((bare.token.as_str(), bare.ca), ("agentcom_admin_abc", None));
        assert!(TokenFile::parse("t\nsomething else\n").is_err());
        assert!(TokenFile::parse("t\nca-sha256=xyz\n").is_err());
        assert!(!format!("{pinned:?}").contains("agentcom_admin_abc"));
    }
}
