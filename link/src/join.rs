//! Join tokens: `acj_<id>_<secret>_<pin>`. The id names the token in listings, the secret is
//! what the hub checks (it stores only its SHA-256), and the pin is the first 16 bytes of the
//! hub's CA fingerprint, so a new machine knows which hub to trust before it has anything else.

use crate::{Error, Fingerprint};
use sha2::{Digest, Sha256};

const PREFIX: &str = "acj_";
/// Bytes of the CA fingerprint a join token carries: 128 bits, beyond any second preimage.
pub const PIN_BYTES: usize = 16;

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// 12 hex digits, shown by `hubctl join-token ls`.
    pub id: String,
    /// 48 hex digits.
    pub secret: String,
    /// The start of the hub CA's SHA-256.
    pub pin: [u8; PIN_BYTES],
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret: tokens end up in debug logs otherwise.
        f.debug_struct("JoinToken").field("id", &self.id).field("pin", &hex::encode(self.pin)).finish()
    }
}

impl JoinToken {
    /// A new token for the hub whose CA has fingerprint `ca`.
    pub fn mint(ca: &Fingerprint) -> JoinToken {
        let id: [u8; 6] = rand::random();
        let secret: [u8; 24] = rand::random();
        let mut pin = [0; PIN_BYTES];
        pin.copy_from_slice(&ca.0[..PIN_BYTES]);
        JoinToken { id: hex::encode(id), secret: hex::encode(secret), pin }
    }

    /// The hex SHA-256 of the secret: what the hub stores.
    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }

    pub fn parse(text: &str) -> Result<JoinToken, Error> {
        let text = text.trim();
        let bad = |why: &str| {
            Error::JoinToken(format!(
                "not a join token ({why}): expected acj_<id>_<secret>_<pin>, as `hubctl join-token create` prints"
            ))
        };
        let rest = text.strip_prefix(PREFIX).ok_or_else(|| bad("it does not start with acj_"))?;
        let parts: Vec<&str> = rest.split('_').collect();
        let [id, secret, pin] = parts.as_slice() else { return Err(bad("it does not have three parts")) };
        let hex_of = |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_of(id, 12) || !hex_of(secret, 48) || !hex_of(pin, PIN_BYTES * 2) {
            return Err(bad("a part has the wrong length or is not hex"));
        }
        let mut pin_bytes = [0; PIN_BYTES];
        pin_bytes.copy_from_slice(&hex::decode(pin).map_err(|_| bad("the pin is not hex"))?);
        Ok(JoinToken { id: id.to_ascii_lowercase(), secret: secret.to_ascii_lowercase(), pin: pin_bytes })
    }

    /// Whether `ca` is the authority this token pins.
    pub fn pins(&self, ca: &Fingerprint) -> bool {
        ca.0[..PIN_BYTES] == self.pin
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}_{}_{}", self.id, self.secret, hex::encode(self.pin))
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_round_trips_and_pins_its_authority() {
        let ca = Fingerprint::of(b"ca");
        let token = JoinToken::mint(&ca);
        let text = token.to_string();
        assert!(text.starts_with("acj_"));
        let parsed = JoinToken::parse(&format!(" {text}\n")).unwrap();
        assert_eq!(parsed, token);
        assert!(parsed.pins(&ca));
        assert!(!parsed.pins(&Fingerprint::of(b"another ca")));
        assert_ne!(token.secret_hash(), token.secret);
        assert!(!format!("{token:?}").contains(&token.secret), "debug output hides the secret");
    }

    #[test]
    fn malformed_tokens_are_refused_with_the_expected_shape() {
        let good = JoinToken::mint(&Fingerprint::of(b"ca")).to_string();
        for bad in ["", "agentcom_join_abc", "acj_", "acj_a_b_c", &good[..good.len() - 1], &good.replace('_', "-")] {
            let err = JoinToken::parse(bad).unwrap_err().to_string();
            assert!(err.contains("acj_<id>_<secret>_<pin>"), "{bad:?}: {err}");
        }
    }
}
