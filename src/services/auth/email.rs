//! Email addresses as account keys: one key per mailbox however it is typed
//! (NFKC, lower case), and a refusal for addresses that could pass for
//! another one (invisible characters, mixed scripts, look-alikes of an
//! ASCII address). The policy, as users see it, is in docs/reference.md.
//!
//! The rules, in order:
//! 1. Surrounding whitespace is trimmed. What is left: 3..=254 bytes, no
//!    whitespace, control or default-ignorable code point (zero-width
//!    spaces and joiners, U+2060, U+FEFF, bidi controls, variation
//!    selectors, soft hyphen, tags: Unicode's `Default_Ignorable_Code_Point`).
//! 2. The key is `NFKC(lowercase(NFKC(email)))`: full-width and other
//!    compatibility forms fold to their plain letters, then case folds
//!    (NFKC again because lower-casing can leave a string unnormalised).
//! 3. Exactly one `@`, with something on both sides.
//! 4. The domain is ASCII: dot-separated labels of letters, digits and
//!    hyphens (1..=63 each, no hyphen at either end, no empty label, so no
//!    trailing dot). An internationalised domain is given in its `xn--`
//!    (punycode) form.
//! 5. The local part (before `@`) is visible ASCII, or, where it is not,
//!    made of characters UTS #39's General Security Profile allows in
//!    identifiers, all of one script (UTS #39 single-script: digits and
//!    punctuation go with any script), and not a whole-script look-alike of
//!    an ASCII local part (its UTS #39 confusable skeleton is not all
//!    ASCII). The skeleton is only checked for non-ASCII local parts: among
//!    ASCII addresses `rn`/`m` or `l`/`1` are different mailboxes, and
//!    mail providers keep them apart.

use unicode_normalization::UnicodeNormalization as _;
use unicode_security::{GeneralSecurityProfile as _, MixedScript as _};

use super::error::AuthError;

/// Longest email, in bytes (RFC 5321's path limit less the brackets).
pub const MAX_EMAIL_BYTES: usize = 254;
/// Shortest email, in bytes (`a@b`).
pub const MIN_EMAIL_BYTES: usize = 3;
/// Longest domain label (RFC 1035).
const MAX_LABEL_BYTES: usize = 63;

/// Why an email is refused; the message names the rule, never the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Length or the `@`.
    #[error("email: 3..=254 bytes with exactly one '@' and something on both sides")]
    Shape,
    /// Whitespace, a control character or an invisible one.
    #[error(
        "email: no spaces, control characters or invisible characters (zero-width spaces or joiners, bidi controls, BOM, soft hyphen)"
    )]
    Invisible,
    /// A domain that is not plain ASCII labels.
    #[error(
        "email: the domain must be dot-separated labels of ASCII letters, digits and hyphens (an internationalised domain in its xn-- form), without a trailing dot"
    )]
    Domain,
    /// A character not allowed in the local part.
    #[error(
        "email: the part before '@' has a character not allowed in identifiers (Unicode UTS #39 general security profile)"
    )]
    Character,
    /// Letters of more than one script in the local part.
    #[error(
        "email: the part before '@' mixes scripts (e.g. Latin and Cyrillic letters); use one script"
    )]
    MixedScript,
    /// A non-ASCII local part that reads as an ASCII one.
    #[error(
        "email: the part before '@' looks like a plain ASCII address written with other letters; type it in ASCII"
    )]
    LookAlike,
}

impl From<Refused> for AuthError {
    fn from(r: Refused) -> Self {
        AuthError::Invalid(r.to_string())
    }
}

/// Unicode's `Default_Ignorable_Code_Point` (DerivedCoreProperties.txt,
/// unchanged since Unicode 9 but for U+2065): code points that render as
/// nothing. unicode-security has the table but does not export it.
const DEFAULT_IGNORABLE: [(u32, u32); 17] = [
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
];

/// True for a default-ignorable (invisible) code point.
#[must_use]
pub fn is_invisible(c: char) -> bool {
    let c = u32::from(c);
    DEFAULT_IGNORABLE
        .iter()
        .any(|&(lo, hi)| (lo..=hi).contains(&c))
}

fn visible(s: &str) -> Result<(), Refused> {
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || is_invisible(c))
    {
        return Err(Refused::Invisible);
    }
    Ok(())
}

fn domain_ok(domain: &str) -> bool {
    domain.len() <= MAX_EMAIL_BYTES
        && domain.split('.').all(|label| {
            (1..=MAX_LABEL_BYTES).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn local_ok(local: &str) -> Result<(), Refused> {
    if local.is_ascii() {
        // Visible ASCII (whitespace and controls are refused before).
        return Ok(());
    }
    if local
        .chars()
        .any(|c| !c.is_ascii() && !c.identifier_allowed())
    {
        return Err(Refused::Character);
    }
    if !local.is_single_script() {
        return Err(Refused::MixedScript);
    }
    if unicode_security::skeleton(local).all(|c| c.is_ascii()) {
        return Err(Refused::LookAlike);
    }
    Ok(())
}

/// The key `email` is unique under, or why it is refused (the rules are in
/// the module's documentation). Sign-up and log-in both go through it, so
/// any spelling of an address finds the one account.
///
/// # Errors
/// The rule the address breaks.
pub fn key(email: &str) -> Result<String, Refused> {
    let email = email.trim();
    if !(MIN_EMAIL_BYTES..=MAX_EMAIL_BYTES).contains(&email.len()) {
        return Err(Refused::Shape);
    }
    visible(email)?;
    let folded: String = email
        .nfkc()
        .collect::<String>()
        .to_lowercase()
        .nfkc()
        .collect();
    // Compatibility forms can unfold into something invisible or longer.
    visible(&folded)?;
    if folded.len() > MAX_EMAIL_BYTES {
        return Err(Refused::Shape);
    }
    let (local, domain) = folded.split_once('@').ok_or(Refused::Shape)?;
    if local.is_empty() || domain.is_empty() || domain.contains('@') {
        return Err(Refused::Shape);
    }
    if !domain_ok(domain) {
        return Err(Refused::Domain);
    }
    local_ok(local)?;
    Ok(folded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses_keep_their_key_lower_cased() {
        for (email, want) in [
            ("ada@example.com", "ada@example.com"),
            ("Ada@Example.COM", "ada@example.com"),
            ("  ada@example.com\n", "ada@example.com"),
            ("A.B+c@x.io", "a.b+c@x.io"),
            ("a@b", "a@b"),
            (
                "o'brien@xn--bcher-kva.example",
                "o'brien@xn--bcher-kva.example",
            ),
        ] {
            assert_eq!(key(email).as_deref(), Ok(want), "{email}");
        }
    }

    #[test]
    fn compatibility_forms_fold_to_the_plain_address() {
        // Full-width letters, '@' and full stop; the "ℓ" ligature-like letter.
        assert_eq!(
            key("ａｄａ＠ｅｘａｍｐｌｅ．ｃｏｍ").as_deref(),
            Ok("ada@example.com")
        );
        assert_eq!(key("ℓee@example.com").as_deref(), Ok("lee@example.com"));
        // Upper-case non-ASCII folds too.
        assert_eq!(key("JOSÉ@example.com").as_deref(), Ok("josé@example.com"));
        // A decomposed é composes to the same key.
        assert_eq!(key("jose\u{301}@example.com"), key("josé@example.com"));
    }

    #[test]
    fn invisible_characters_are_refused() {
        for c in [
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{2060}',
            '\u{FEFF}',
            '\u{202E}',
            '\u{2066}',
            '\u{00AD}',
            '\u{FE0F}',
            '\u{E0041}',
            '\u{0}',
            '\u{7}',
            ' ',
            '\u{A0}',
            '\u{3000}',
        ] {
            let email = format!("a{c}da@example.com");
            assert_eq!(
                key(&email),
                Err(Refused::Invisible),
                "U+{:04X}",
                u32::from(c)
            );
        }
    }

    #[test]
    fn look_alikes_are_refused() {
        // Cyrillic 'а' (U+0430) among Latin letters.
        assert_eq!(key("\u{430}da@example.com"), Err(Refused::MixedScript));
        // All-Cyrillic letters that read as Latin "ace".
        assert_eq!(
            key("\u{430}\u{441}\u{435}@example.com"),
            Err(Refused::LookAlike)
        );
        // Dotless i reads as "i".
        assert_eq!(key("b\u{131}ll@example.com"), Err(Refused::LookAlike));
        // A Cyrillic letter in the domain.
        assert_eq!(key("ada@ex\u{430}mple.com"), Err(Refused::Domain));
        // Trailing dot, empty label, bad hyphens, underscores, IP literals.
        for domain in [
            "example.com.",
            "example..com",
            "-example.com",
            "example-.com",
            "ex_ample.com",
            "[127.0.0.1]",
        ] {
            assert_eq!(
                key(&format!("ada@{domain}")),
                Err(Refused::Domain),
                "{domain}"
            );
        }
    }

    #[test]
    fn single_script_non_ascii_addresses_are_kept() {
        for email in [
            "дмитрий@example.com",
            "müller@example.com",
            "josé.garcía@example.com",
            "用户@example.com",
            "ελένη@example.com",
        ] {
            assert!(key(email).is_ok(), "{email}: {:?}", key(email));
        }
        // Symbols that are no identifier characters.
        assert_eq!(key("a\u{2603}@example.com"), Err(Refused::Character));
    }

    #[test]
    fn shapes_are_checked() {
        let long = format!("{}@x.io", "a".repeat(250));
        for bad in ["", "ab", "a@b@c", "@ab", "ab@", &long] {
            assert_eq!(key(bad), Err(Refused::Shape), "{bad:?}");
        }
        // U+FDFA unfolds to 18 characters: too long once folded.
        let unfolding = format!("{}@x.io", "\u{FDFA}".repeat(20));
        assert!(key(&unfolding).is_err());
    }

    #[test]
    fn the_message_never_echoes_the_address() {
        let e = key("secret\u{200B}@example.com").expect_err("refused");
        assert!(!e.to_string().contains("secret"));
    }
}
