//! Secrets in memory (API keys, the bootstrap admin key, provider keys): never printed by
//! `Debug`, and [`scrub`] for text that came back from elsewhere (provider error bodies)
//! before it is logged, stored or returned.
use std::sync::LazyLock;

/// A secret string: `Debug` shows `<redacted>`; [`Secret::expose`] is the only way in.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Shapes of credentials worth hiding wherever they turn up: Quiver keys, bearer tokens,
/// the common provider key formats (OpenAI/Anthropic `sk-…`, Google `AIza…`, AWS ids), and
/// credentials in URLs (`user:password@host`, `?key=…`, `&sig=…`).
static CREDENTIAL: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"(?i)qk_[0-9a-f]{16}_[0-9a-f]+|bearer\s+[A-Za-z0-9._~+/=-]{8,}|\bsk-[A-Za-z0-9_-]{8,}|\bAIza[0-9A-Za-z_-]{20,}|\bAKIA[0-9A-Z]{16}\b|(api[_-]?key|x-api-key|token|secret|password|[?&](?:key|sig|signature|code|auth))(\W{1,3})[A-Za-z0-9._~+/=%-]{8,}|(://)()[^/\s:@]+:[^/\s@]+@",
    )
    .expect("invariant: the credential pattern compiles")
});

/// Replaces `known` secrets and anything shaped like a credential with `[redacted]`.
pub fn scrub(text: &str, known: &[&Secret]) -> String {
    let mut out = text.to_owned();
    for k in known {
        if k.0.len() >= 4 {
            out = out.replace(&k.0, "[redacted]");
        }
    }
    CREDENTIAL
        .replace_all(&out, |c: &regex::Captures<'_>| {
            match (c.get(1), c.get(2), c.get(3)) {
                (Some(name), Some(sep), _) => {
                    format!("{}{}[redacted]", name.as_str(), sep.as_str())
                }
                (_, _, Some(scheme)) => format!("{}[redacted]@", scheme.as_str()),
                _ => "[redacted]".to_owned(),
            }
        })
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(
            format!("{:?}", Some(Some(s.clone()))),
            "Some(Some(<redacted>))"
        );
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn scrub_hides_keys_in_provider_errors() {
        let mine = Secret::new("my-own-provider-key-123");
        for (text, leaked) in [
            (
                "Incorrect API key provided: sk-proj-abcdefghijklmnop",
                "abcdefghijklmnop",
            ),
            (
                "echo: Authorization: Bearer abcdef0123456789xyz",
                "abcdef0123456789xyz",
            ),
            (
                "bad key my-own-provider-key-123 given",
                "my-own-provider-key-123",
            ),
            ("api_key=ZZZZZZZZZZZZZZZZ", "ZZZZZZZZZZZZZZZZ"),
            ("qk_0123456789abcdef_deadbeefdeadbeef", "deadbeef"),
            (
                "error sending request for url (https://api.example.com/v1/chat?key=Zq9x8c7v6b5n4m3)",
                "Zq9x8c7v6b5n4m3",
            ),
            (
                "POST https://svc.example/v1?model=m&sig=abcdEFGH1234%2Fxyz failed",
                "abcdEFGH1234",
            ),
            (
                "connect https://alice:s3cr3t-pass@proxy.example:8443/v1 refused",
                "s3cr3t-pass",
            ),
        ] {
            let out = scrub(text, &[&mine]);
            assert!(!out.contains(leaked), "{text} -> {out}");
            assert!(out.contains("[redacted]"), "{text} -> {out}");
        }
        assert_eq!(
            scrub("model not found: gpt-9", &[&mine]),
            "model not found: gpt-9"
        );
    }
}
