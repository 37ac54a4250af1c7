//! Strict SSH signature armor (PROTOCOL.sshsig §1), written here because `ssh-key` is lenient
//! (it accepts text before the header, signing-gate.md §2.2).
//!
//! Accepted: the header at byte 0, base64 lines of 1-76 characters, the footer, at most one
//! final newline; CRLF line ends are the only normalisation. The size cap is checked before
//! anything is looked at or allocated, so an 11 MB "signature" costs nothing.

use base64::Engine as _;

use crate::rejection::{Rejection, RejectionCode};

/// Largest armored signature accepted (bytes).
pub const MAX_SIGNATURE_BYTES: usize = 8 * 1024;
const HEADER: &str = "-----BEGIN SSH SIGNATURE-----";
const FOOTER: &str = "-----END SSH SIGNATURE-----";
const MAX_LINE: usize = 76;

fn malformed(msg: impl Into<String>) -> Rejection {
    Rejection::new(RejectionCode::MalformedSignature, msg)
}

/// Checks the armor and returns the decoded SSHSIG blob.
pub fn decode_armor(input: &[u8]) -> Result<Vec<u8>, Rejection> {
    if input.len() > MAX_SIGNATURE_BYTES {
        return Err(Rejection::new(
            RejectionCode::SignatureTooLarge,
            format!(
                "the signature is {} bytes; at most {MAX_SIGNATURE_BYTES} are allowed",
                input.len()
            ),
        ));
    }
    let text = std::str::from_utf8(input).map_err(|_| malformed("the signature is not ASCII"))?;
    if !text.starts_with(HEADER) {
        return Err(malformed(
            "the signature must start with -----BEGIN SSH SIGNATURE----- at its first byte",
        ));
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    let body = body.strip_suffix('\r').unwrap_or(body);
    let mut lines = body.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    if lines.next() != Some(HEADER) {
        return Err(malformed(
            "the header line must be exactly -----BEGIN SSH SIGNATURE-----",
        ));
    }
    let mut b64 = String::with_capacity(input.len());
    let mut saw_footer = false;
    for line in lines {
        if saw_footer {
            return Err(malformed("text after the -----END SSH SIGNATURE----- line"));
        }
        if line == FOOTER {
            saw_footer = true;
            continue;
        }
        if line.is_empty() || line.len() > MAX_LINE {
            return Err(malformed(format!(
                "armor lines must hold 1-{MAX_LINE} base64 characters"
            )));
        }
        if !line
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=')
        {
            return Err(malformed("armor line holds a character outside base64"));
        }
        b64.push_str(line);
    }
    if !saw_footer {
        return Err(malformed("the -----END SSH SIGNATURE----- line is missing"));
    }
    base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| malformed(format!("invalid base64 in the armor: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GOOD: &str = "-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n";

    #[test]
    fn accepts_lf_and_crlf() {
        assert_eq!(decode_armor(GOOD.as_bytes()).unwrap(), b"SSHSIG");
        let crlf = GOOD.replace('\n', "\r\n");
        assert_eq!(decode_armor(crlf.as_bytes()).unwrap(), b"SSHSIG");
        let no_final = GOOD.trim_end();
        assert_eq!(decode_armor(no_final.as_bytes()).unwrap(), b"SSHSIG");
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            format!("x{GOOD}"),
            format!(" {GOOD}"),
            format!("{GOOD}trailing\n"),
            format!("{GOOD}\n"),
            GOOD.replace("U1NIU0lH", "U1NIU0lH\n"),
            GOOD.replace("U1NIU0lH", "U1NI U0lH"),
            GOOD.replace("U1NIU0lH", "U1NIU0l"),
            GOOD.replace("U1NIU0lH", &"QUFB".repeat(20)),
            GOOD.replace("-----END SSH SIGNATURE-----\n", ""),
            GOOD.replace("\n", "\r"),
        ] {
            let e = decode_armor(bad.as_bytes()).unwrap_err();
            assert_eq!(e.code, RejectionCode::MalformedSignature, "{bad:?}");
        }
    }

    #[test]
    fn size_cap_first() {
        let huge = vec![b'A'; 11 * 1024 * 1024];
        assert_eq!(
            decode_armor(&huge).unwrap_err().code,
            RejectionCode::SignatureTooLarge
        );
    }
}
