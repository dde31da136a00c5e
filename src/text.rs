//! Text helpers shared by the services.

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary (what every length limit on free text cuts to).
#[must_use]
pub fn prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cuts_on_a_char_boundary() {
        assert_eq!(prefix("héllo", 2), "h");
        assert_eq!(prefix("héllo", 3), "hé");
        assert_eq!(prefix("abc", 5), "abc");
        assert_eq!(prefix("abc", 0), "");
    }

    proptest! {
        #[test]
        fn is_the_longest_prefix_within_the_limit(s in "\\PC{0,40}", max in 0usize..60) {
            let p = prefix(&s, max);
            prop_assert!(s.starts_with(p));
            prop_assert!(p.len() <= max);
            // One more character would pass the limit (or there is none).
            let next = s[p.len()..].chars().next();
            prop_assert!(next.is_none_or(|c| p.len() + c.len_utf8() > max));
        }
    }
}
