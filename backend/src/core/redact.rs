//! Keeps secrets out of logs and responses: URL credentials and `password=` style pairs.
//!
//! Everything that shows an error text or a URL to a person goes through here first.

use url::Url;

const MASK: &str = "****";

/// A URL with its password (and any `password=` query value) replaced by `****`.
/// Text that is not a URL is passed through [`redact_text`].
pub fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                // Setting a password only fails for URLs that cannot have one.
                let _ = url.set_password(Some(MASK));
            }
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let secret = is_secret_key(&k);
                    (
                        k.into_owned(),
                        if secret {
                            MASK.to_owned()
                        } else {
                            v.into_owned()
                        },
                    )
                })
                .collect();
            if !pairs.is_empty() {
                url.query_pairs_mut().clear().extend_pairs(pairs);
            }
            url.to_string()
        }
        Err(_) => redact_text(raw),
    }
}

/// Masks credentials inside free text, such as a driver's error message:
/// `scheme://user:secret@host` and `password=secret` / `token: secret`.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&redact_word(word));
    }
    out
}

fn redact_word(word: &str) -> String {
    // scheme://user:password@host...
    if let Some(scheme_end) = word.find("://") {
        let rest = &word[scheme_end + 3..];
        if let Some(at) = rest.find('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                return format!(
                    "{}{}:{MASK}{}",
                    &word[..scheme_end + 3],
                    &userinfo[..colon],
                    &rest[at..]
                );
            }
        }
    }
    // key=value or key:value where key names a secret
    for sep in ['=', ':'] {
        if let Some(pos) = word.find(sep) {
            let key = word[..pos].trim_matches(|c: char| !c.is_alphanumeric() && c != '_');
            if is_secret_key(key) && pos + 1 < word.len() {
                return format!("{}{MASK}", &word[..=pos]);
            }
        }
    }
    word.to_owned()
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password", "passwd", "pwd", "secret", "token", "apikey", "api_key",
    ]
    .iter()
    .any(|s| key == *s || key.ends_with(&format!("_{s}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/trading"),
            "postgres://app:****@db:5432/trading"
        );
        assert_eq!(
            redact_url("redis://:hunter2@127.0.0.1:6379"),
            "redis://:****@127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("postgres://app@db/trading?password=x&sslmode=off"),
            "postgres://app@db/trading?password=****&sslmode=off"
        );
    }

    #[test]
    fn urls_without_secrets_are_unchanged() {
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/trading"),
            "postgres://postgres@127.0.0.1:5432/trading"
        );
    }

    #[test]
    fn secrets_in_free_text_are_masked() {
        assert_eq!(
            redact_text("error connecting to postgres://u:pw@h/db: refused"),
            "error connecting to postgres://u:****@h/db: refused"
        );
        assert_eq!(
            redact_text("auth failed password=abc user=bob"),
            "auth failed password=**** user=bob"
        );
        assert_eq!(redact_text("plain words"), "plain words");
    }
}
