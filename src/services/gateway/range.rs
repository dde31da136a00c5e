//! The `Range` request header (RFC 9110 §14.2): byte ranges only. A header
//! that does not parse is ignored (the whole file is served), as the RFC asks.

/// Longest `Range` header accepted; longer is refused (400).
pub const MAX_HEADER_BYTES: usize = 256;
/// Most ranges in one header; more is refused (400).
pub const MAX_RANGES: usize = 16;

/// One byte range as requested, before the file size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// `a-b`: bytes a..=b.
    FromTo(u64, u64),
    /// `a-`: from a to the end.
    From(u64),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// What a `Range` header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a valid bytes range set: serve the whole file.
    Ignore,
    /// Over [`MAX_HEADER_BYTES`] or [`MAX_RANGES`]: refuse the request.
    TooLarge,
    /// 1..=[`MAX_RANGES`] ranges, in the order given.
    Ranges(Vec<Spec>),
}

/// A digit run as a number; saturates at `u64::MAX` (such a position lies
/// past any file, and such a length covers all of it).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

fn spec(s: &str) -> Option<Spec> {
    let (first, last) = s.split_once('-')?;
    match (first.is_empty(), last.is_empty()) {
        (true, _) => Some(Spec::Suffix(number(last)?)),
        (false, true) => Some(Spec::From(number(first)?)),
        (false, false) => {
            let (a, b) = (number(first)?, number(last)?);
            (a <= b).then_some(Spec::FromTo(a, b))
        }
    }
}

/// Parses a `Range` header value.
#[must_use]
pub fn parse(header: &str) -> Parsed {
    if header.len() > MAX_HEADER_BYTES {
        return Parsed::TooLarge;
    }
    let Some((unit, set)) = header.split_once('=') else {
        return Parsed::Ignore;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Parsed::Ignore;
    }
    let mut ranges = Vec::new();
    // `1#range-spec`: empty list elements are allowed and skipped.
    for element in set.split(',').map(|e| e.trim_matches([' ', '\t'])) {
        if element.is_empty() {
            continue;
        }
        let Some(s) = spec(element) else {
            return Parsed::Ignore;
        };
        if ranges.len() == MAX_RANGES {
            return Parsed::TooLarge;
        }
        ranges.push(s);
    }
    if ranges.is_empty() {
        Parsed::Ignore
    } else {
        Parsed::Ranges(ranges)
    }
}

impl Spec {
    /// The bytes `(first, last)` (inclusive) this range selects in a file of
    /// `size` bytes; `None` when it selects none (unsatisfiable).
    #[must_use]
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        match self {
            Self::FromTo(a, b) => (a < size).then(|| (a, b.min(size - 1))),
            Self::From(a) => (a < size).then(|| (a, size - 1)),
            Self::Suffix(n) => (n > 0 && size > 0).then(|| (size - n.min(size), size - 1)),
        }
    }

    /// Where the range starts, when that is known without the file size.
    #[must_use]
    pub fn start(self) -> Option<u64> {
        match self {
            Self::FromTo(a, _) | Self::From(a) => Some(a),
            Self::Suffix(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_three_forms() {
        assert_eq!(
            parse("bytes=0-499"),
            Parsed::Ranges(vec![Spec::FromTo(0, 499)])
        );
        assert_eq!(parse("bytes=500-"), Parsed::Ranges(vec![Spec::From(500)]));
        assert_eq!(parse("bytes=-500"), Parsed::Ranges(vec![Spec::Suffix(500)]));
        assert_eq!(
            parse("Bytes = 0-0 , ,-1"),
            Parsed::Ranges(vec![Spec::FromTo(0, 0), Spec::Suffix(1)])
        );
        assert_eq!(
            parse("bytes=99999999999999999999999-"),
            Parsed::Ranges(vec![Spec::From(u64::MAX)])
        );
    }

    #[test]
    fn invalid_headers_are_ignored_and_huge_ones_refused() {
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=,",
            "items=0-1",
            "bytes=1-0",
            "bytes=a-b",
            "bytes=-",
            "bytes=1",
            "bytes=0-1-2",
            "bytes=+1-2",
            "bytes=0x1-2",
            "bytes=0-1;x",
        ] {
            assert_eq!(parse(bad), Parsed::Ignore, "{bad:?}");
        }
        let many = format!("bytes={}", vec!["0-0"; MAX_RANGES + 1].join(","));
        assert_eq!(parse(&many), Parsed::TooLarge);
        let sixteen = format!("bytes={}", vec!["0-0"; MAX_RANGES].join(","));
        assert!(matches!(parse(&sixteen), Parsed::Ranges(r) if r.len() == MAX_RANGES));
        let long = format!("bytes=0-{}", "1".repeat(MAX_HEADER_BYTES));
        assert_eq!(parse(&long), Parsed::TooLarge);
    }

    #[test]
    fn resolving_against_a_size() {
        assert_eq!(Spec::FromTo(0, 499).resolve(10_000), Some((0, 499)));
        assert_eq!(
            Spec::FromTo(9_500, 20_000).resolve(10_000),
            Some((9_500, 9_999))
        );
        assert_eq!(Spec::FromTo(10_000, 20_000).resolve(10_000), None);
        assert_eq!(Spec::From(9_999).resolve(10_000), Some((9_999, 9_999)));
        assert_eq!(Spec::Suffix(500).resolve(10_000), Some((9_500, 9_999)));
        assert_eq!(Spec::Suffix(20_000).resolve(10_000), Some((0, 9_999)));
        assert_eq!(Spec::Suffix(0).resolve(10_000), None);
        for s in [Spec::FromTo(0, 0), Spec::From(0), Spec::Suffix(1)] {
            assert_eq!(
                s.resolve(0),
                None,
                "nothing is satisfiable in an empty file"
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_inside_the_file(header in "\\PC{0,300}", size in 0u64..5_000) {
            if let Parsed::Ranges(ranges) = parse(&header) {
                prop_assert!(!ranges.is_empty() && ranges.len() <= MAX_RANGES);
                for r in ranges {
                    if let Some((first, last)) = r.resolve(size) {
                        prop_assert!(first <= last && last < size);
                    }
                }
            }
        }

        #[test]
        fn well_formed_ranges_resolve_inside(a in 0u64..u64::MAX, len in 0u64..1 << 20, n in 0u64..u64::MAX, size in 0u64..u64::MAX) {
            let b = a.saturating_add(len);
            for header in [format!("bytes={a}-{b}"), format!("bytes={a}-"), format!("bytes=-{n}")] {
                let Parsed::Ranges(ranges) = parse(&header) else {
                    return Err(TestCaseError::fail(format!("{header} parses")));
                };
                prop_assert_eq!(ranges.len(), 1);
                if let Some((first, last)) = ranges[0].resolve(size) {
                    prop_assert!(first <= last && last < size);
                    if let Some(start) = ranges[0].start() {
                        prop_assert_eq!(start, first);
                    }
                }
            }
        }
    }
}
