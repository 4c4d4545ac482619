//! Bearer-token checks shared by the protected endpoints (/health/details, /metrics).

/// Whether an `Authorization` header carries `Bearer <expected>`. Compared in constant
/// time, so timing does not reveal how much of a token matched.
pub fn bearer_matches(expected: &str, authorization: Option<&str>) -> bool {
    authorization
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .is_some_and(|presented| constant_time_eq(presented.as_bytes(), expected.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        assert!(bearer_matches("abc", Some("Bearer abc")));
        assert!(!bearer_matches("abc", Some("Bearer abd")));
        assert!(!bearer_matches("abc", Some("Bearer abcd")));
        assert!(!bearer_matches("abc", Some("abc")));
        assert!(!bearer_matches("abc", None));
    }
}
