//! Channel patterns and the resolution of channel names against them.
//!
//! A pattern is one or more segments of `[A-Za-z0-9-]` separated by `:`,
//! where `%` (as in SQL `LIKE`) matches any run of characters, `:` included.
//! The first segment is always literal, so every name that matches a pattern
//! shares its first segment; [`PatternIndex`] uses that to look at a few
//! candidates instead of every pattern.
//!
//! Resolving a name: an exact (wildcard-free) pattern equal to the name wins;
//! otherwise the most specific matching wildcard pattern: fewest `%`, then the
//! longest pattern, then the smallest in byte order (so the choice never
//! depends on insertion order). Matching is case-sensitive, like PostgreSQL.

use std::collections::HashMap;

/// The longest pattern or channel name accepted, in bytes.
pub const MAX_LEN: usize = 255;

/// Why a pattern was refused. The `Display` text is what API users see.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The empty string.
    #[error("channel pattern must not be empty")]
    Empty,
    /// More than [`MAX_LEN`] bytes.
    #[error("channel pattern must be at most {MAX_LEN} characters")]
    TooLong,
    /// `_` is LIKE's single-character wildcard, which patterns do not use.
    #[error("channel pattern must not contain '_'; use '%' as the wildcard")]
    Underscore,
    /// `a::b`, `:a`, `a:`.
    #[error("channel pattern segments must not be empty")]
    EmptySegment,
    /// `%:x`, `or%der:1`.
    #[error("the first segment of a channel pattern must not contain '%'")]
    WildcardInFirstSegment,
    /// Anything outside `[A-Za-z0-9-%:]`.
    #[error("channel pattern contains {0:?}; segments may only use letters, digits, '-' and '%'")]
    InvalidCharacter(char),
}

/// Why a channel name (what clients subscribe to) was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The empty string.
    #[error("channel name must not be empty")]
    Empty,
    /// More than [`MAX_LEN`] bytes.
    #[error("channel name must be at most {MAX_LEN} characters")]
    TooLong,
    /// Names are concrete: `%` belongs to patterns.
    #[error("channel name must not contain '%'")]
    Wildcard,
    /// White space or control characters.
    #[error("channel name must not contain white space or control characters")]
    InvalidCharacter,
}

/// Checks that `pattern` is a valid channel pattern.
///
/// # Errors
/// The first rule the pattern breaks.
pub fn validate_pattern(pattern: &str) -> Result<(), PatternError> {
    if pattern.is_empty() {
        return Err(PatternError::Empty);
    }
    if pattern.len() > MAX_LEN {
        return Err(PatternError::TooLong);
    }
    for (index, segment) in pattern.split(':').enumerate() {
        if segment.is_empty() {
            return Err(PatternError::EmptySegment);
        }
        for c in segment.chars() {
            match c {
                'A'..='Z' | 'a'..='z' | '0'..='9' | '-' => {}
                '%' if index == 0 => return Err(PatternError::WildcardInFirstSegment),
                '%' => {}
                '_' => return Err(PatternError::Underscore),
                other => return Err(PatternError::InvalidCharacter(other)),
            }
        }
    }
    Ok(())
}

/// Checks that `name` can be subscribed or published to: 1 to [`MAX_LEN`]
/// bytes, no `%`, no white space or control characters.
///
/// # Errors
/// The first rule the name breaks.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_LEN {
        return Err(NameError::TooLong);
    }
    if name.contains('%') {
        return Err(NameError::Wildcard);
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NameError::InvalidCharacter);
    }
    Ok(())
}

/// Whether `name` matches `pattern`, where `%` matches any run of characters
/// and everything else matches itself.
pub fn like_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.as_bytes();
    let name = name.as_bytes();
    // Greedy match with one backtrack point: the classic wildcard algorithm,
    // linear in practice and never exponential.
    let (mut p, mut n) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'%' {
            backtrack = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((star, matched)) = backtrack {
            p = star + 1;
            n = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&byte| byte == b'%')
}

fn n_wildcards(pattern: &str) -> usize {
    pattern.bytes().filter(|&byte| byte == b'%').count()
}

fn first_segment(text: &str) -> &str {
    text.split(':').next().unwrap_or(text)
}

/// Orders wildcard patterns from most to least specific.
fn specificity_order(a: &str, b: &str) -> std::cmp::Ordering {
    n_wildcards(a)
        .cmp(&n_wildcards(b))
        .then(b.len().cmp(&a.len()))
        .then(a.cmp(b))
}

/// Patterns with a value each, ready to resolve names. Build it once per
/// change of the channel table; resolving does not allocate.
#[derive(Clone, Debug)]
pub struct PatternIndex<T> {
    /// Wildcard-free patterns, by the exact name they match.
    exact: HashMap<String, T>,
    /// Wildcard patterns by their literal first segment, most specific first.
    wildcards: HashMap<String, Vec<(String, T)>>,
}

impl<T> Default for PatternIndex<T> {
    fn default() -> Self {
        PatternIndex {
            exact: HashMap::new(),
            wildcards: HashMap::new(),
        }
    }
}

impl<T> PatternIndex<T> {
    /// Builds an index from `(pattern, value)` pairs. Patterns are expected
    /// to be valid; a later duplicate replaces an earlier one.
    pub fn new(entries: impl IntoIterator<Item = (String, T)>) -> Self {
        let mut index = PatternIndex::default();
        for (pattern, value) in entries {
            if pattern.contains('%') {
                let bucket = index
                    .wildcards
                    .entry(first_segment(&pattern).to_owned())
                    .or_default();
                bucket.retain(|(existing, _)| *existing != pattern);
                bucket.push((pattern, value));
            } else {
                index.exact.insert(pattern, value);
            }
        }
        for bucket in index.wildcards.values_mut() {
            bucket.sort_by(|(a, _), (b, _)| specificity_order(a, b));
        }
        index
    }

    /// The value of the pattern that `name` resolves to, with that pattern.
    pub fn resolve(&self, name: &str) -> Option<(&str, &T)> {
        if let Some((pattern, value)) = self.exact.get_key_value(name) {
            return Some((pattern.as_str(), value));
        }
        self.wildcards
            .get(first_segment(name))?
            .iter()
            .find(|(pattern, _)| like_matches(pattern, name))
            .map(|(pattern, value)| (pattern.as_str(), value))
    }

    /// How many patterns the index holds.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcards.values().map(Vec::len).sum::<usize>()
    }

    /// Whether the index holds no pattern.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_pattern(pattern: &str, expected: Result<(), PatternError>) {
        assert_eq!(validate_pattern(pattern), expected, "pattern {pattern:?}");
    }

    #[test]
    fn valid_patterns() {
        for pattern in [
            "order",
            "order:%",
            "order:%:items",
            "chat:room-1",
            "a:b%c:%",
            "A-1:%%",
        ] {
            check_pattern(pattern, Ok(()));
        }
    }

    #[test]
    fn invalid_patterns() {
        check_pattern("", Err(PatternError::Empty));
        check_pattern(&"a".repeat(256), Err(PatternError::TooLong));
        check_pattern("order:room_1", Err(PatternError::Underscore));
        check_pattern("order::1", Err(PatternError::EmptySegment));
        check_pattern(":order", Err(PatternError::EmptySegment));
        check_pattern("order:", Err(PatternError::EmptySegment));
        check_pattern("%", Err(PatternError::WildcardInFirstSegment));
        check_pattern("or%der:1", Err(PatternError::WildcardInFirstSegment));
        check_pattern("order:1 2", Err(PatternError::InvalidCharacter(' ')));
        check_pattern("order:é", Err(PatternError::InvalidCharacter('é')));
        check_pattern("order.created", Err(PatternError::InvalidCharacter('.')));
    }

    #[test]
    fn names() {
        assert_eq!(validate_name("order:123"), Ok(()));
        assert_eq!(validate_name("chat:room_1:user@example.com"), Ok(()));
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("order:%"), Err(NameError::Wildcard));
        assert_eq!(validate_name("order: 1"), Err(NameError::InvalidCharacter));
        assert_eq!(validate_name(&"x".repeat(256)), Err(NameError::TooLong));
    }

    #[test]
    fn like_semantics() {
        assert!(like_matches("order:%", "order:123"));
        assert!(like_matches("order:%", "order:"));
        assert!(
            like_matches("order:%", "order:1:2"),
            "% crosses segments, as LIKE does"
        );
        assert!(like_matches("order:%:items", "order:7:items"));
        assert!(!like_matches("order:%:items", "order:7:item"));
        assert!(like_matches("a:%b%c", "a:xxbyyc"));
        assert!(like_matches("a:%%", "a:"));
        assert!(!like_matches("order:%", "orders:1"));
        assert!(
            !like_matches("order:%", "Order:1"),
            "matching is case-sensitive"
        );
        assert!(like_matches("chat", "chat"));
        assert!(!like_matches("chat", "chats"));
    }

    #[test]
    fn like_is_not_exponential() {
        let pattern = format!("a:{}b", "%a".repeat(30));
        let name = format!("a:{}", "a".repeat(5000));
        assert!(!like_matches(&pattern, &name));
    }

    #[test]
    fn exact_beats_wildcard() {
        let index = PatternIndex::new([("order:%".to_string(), 1), ("order:123".to_string(), 2)]);
        assert_eq!(index.resolve("order:123"), Some(("order:123", &2)));
        assert_eq!(index.resolve("order:124"), Some(("order:%", &1)));
        assert_eq!(index.resolve("chat:1"), None);
    }

    #[test]
    fn fewest_wildcards_then_longest_wins() {
        let index = PatternIndex::new([
            ("order:%".to_string(), "any"),
            ("order:%:%".to_string(), "two"),
            ("order:%:items".to_string(), "items"),
            ("order:%-vip:items".to_string(), "vip"),
        ]);
        assert_eq!(index.resolve("order:7:items").unwrap().1, &"items");
        assert_eq!(index.resolve("order:7-vip:items").unwrap().1, &"vip");
        assert_eq!(index.resolve("order:7:lines").unwrap().1, &"any");
        assert_eq!(index.resolve("order:7").unwrap().1, &"any");
        assert_eq!(index.len(), 4);
    }

    #[test]
    fn ties_do_not_depend_on_insertion_order() {
        let forward = PatternIndex::new([("a:%x".to_string(), 1), ("a:x%".to_string(), 2)]);
        let backward = PatternIndex::new([("a:x%".to_string(), 2), ("a:%x".to_string(), 1)]);
        assert_eq!(forward.resolve("a:xx"), backward.resolve("a:xx"));
        assert_eq!(forward.resolve("a:xx"), Some(("a:%x", &1)));
    }

    #[test]
    fn single_segment_name_only_matches_exactly() {
        let index = PatternIndex::new([("lobby".to_string(), ()), ("lobby:%".to_string(), ())]);
        assert!(index.resolve("lobby").is_some());
        assert_eq!(index.resolve("lobby:1").map(|(p, _)| p), Some("lobby:%"));
        assert!(index.resolve("lobbyx").is_none());
    }

    #[test]
    fn resolves_among_ten_thousand_patterns() {
        let index = PatternIndex::new((0..10_000).map(|i| (format!("tenant-{i}:%"), i)));
        assert_eq!(
            index.resolve("tenant-9999:orders"),
            Some(("tenant-9999:%", &9999))
        );
        assert_eq!(index.resolve("tenant-10000:orders"), None);
    }
}
