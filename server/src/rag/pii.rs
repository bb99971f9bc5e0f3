//! PII redaction for text that leaves the machine (prompts to hosted providers): emails, phone
//! numbers, payment card numbers (Luhn-checked), IBANs (mod-97-checked) and national ids (US SSN,
//! UK National Insurance). Each match becomes a numbered placeholder (`[EMAIL_1]`); the mapping
//! lets an answer that quotes a placeholder be restored locally. Rules are a list, so a
//! deployment can add its own.
use regex::Regex;

/// One kind of PII: a pattern and an optional check that rejects look-alikes.
pub struct Rule {
    /// Placeholder label, e.g. `EMAIL`.
    pub label: &'static str,
    /// What to find.
    pub pattern: Regex,
    /// Extra validation of a match (e.g. a checksum).
    pub check: Option<fn(&str) -> bool>,
}

/// Digits of `s`, in order.
fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// The Luhn checksum of payment card numbers.
pub fn luhn(s: &str) -> bool {
    let d = digits(s);
    if !(13..=19).contains(&d.len()) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 1 {
                if x * 2 > 9 { x * 2 - 9 } else { x * 2 }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The ISO 13616 mod-97 check of an IBAN.
pub fn iban_ok(s: &str) -> bool {
    let c: Vec<char> = s.chars().filter(|c| !c.is_whitespace()).collect();
    if c.len() < 15 || c.len() > 34 {
        return false;
    }
    let moved = c[4..].iter().chain(&c[..4]);
    let mut rem = 0u64;
    for ch in moved {
        let v = match ch.to_digit(36) {
            Some(v) => v as u64,
            None => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// Finds and replaces PII.
pub struct Redactor {
    rules: Vec<Rule>,
}

/// A redaction: the text with placeholders, and each placeholder's original.
#[derive(Debug, Clone, PartialEq)]
pub struct Redacted {
    /// The redacted text.
    pub text: String,
    /// (placeholder, original) pairs.
    pub map: Vec<(String, String)>,
}

impl Default for Redactor {
    fn default() -> Self {
        let rule = |label, p: &str, check| Rule {
            label,
            pattern: Regex::new(p).expect("invariant: a valid built-in pattern"),
            check,
        };
        Redactor {
            // Order matters: more specific patterns first, so a card number is not taken for
            // a phone number. Phone numbers have 9 to 15 digits (E.164's maximum).
            rules: vec![
                rule(
                    "EMAIL",
                    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
                    None,
                ),
                rule(
                    "IBAN",
                    r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
                    Some(iban_ok),
                ),
                rule("CARD", r"\b\d(?:[ -]?\d){12,18}\b", Some(luhn)),
                rule(
                    "NATIONAL_ID",
                    r"\b\d{3}-\d{2}-\d{4}\b|\b[A-CEGHJ-PR-TW-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b",
                    None,
                ),
                rule(
                    "PHONE",
                    r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){2,4}",
                    Some(|m| (9..=15).contains(&digits(m).len())),
                ),
            ],
        }
    }
}

impl Redactor {
    /// Adds a rule (checked after the built-in ones).
    pub fn with_rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Replaces every match with `[LABEL_n]`; the same value gets the same placeholder.
    pub fn redact(&self, text: &str) -> Redacted {
        let mut out = text.to_owned();
        let mut map: Vec<(String, String)> = Vec::new();
        for rule in &self.rules {
            let mut next = String::with_capacity(out.len());
            let mut last = 0;
            for m in rule.pattern.find_iter(&out) {
                if rule.check.is_some_and(|c| !c(m.as_str())) {
                    continue;
                }
                let original = m.as_str().to_owned();
                let placeholder = match map.iter().find(|(_, o)| *o == original) {
                    Some((p, _)) => p.clone(),
                    None => {
                        let n = map
                            .iter()
                            .filter(|(p, _)| p.starts_with(&format!("[{}_", rule.label)))
                            .count()
                            + 1;
                        let p = format!("[{}_{n}]", rule.label);
                        map.push((p.clone(), original));
                        p
                    }
                };
                next.push_str(&out[last..m.start()]);
                next.push_str(&placeholder);
                last = m.end();
            }
            next.push_str(&out[last..]);
            out = next;
        }
        Redacted { text: out, map }
    }

    /// Puts the originals back into a text (e.g. an answer) that quotes placeholders.
    pub fn restore(text: &str, map: &[(String, String)]) -> String {
        map.iter()
            .fold(text.to_owned(), |t, (p, o)| t.replace(p, o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_each_kind_checks_checksums_and_restores() {
        let r = Redactor::default();
        let text = "Mail ann.lee@example.com or call +44 20 7946 0958. Card 4111 1111 1111 1111, \
                    not 4111 1111 1111 1112. IBAN GB82 WEST 1234 5698 7654 32. SSN 123-45-6789, \
                    NI AB 12 34 56 C. Again ann.lee@example.com. Order 12345 ships in 2024.";
        let red = r.redact(text);
        for secret in [
            "ann.lee@example.com",
            "7946 0958",
            "4111 1111 1111 1111",
            "GB82 WEST",
            "123-45-6789",
            "AB 12 34 56 C",
        ] {
            assert!(!red.text.contains(secret), "{secret} leaked: {}", red.text);
        }
        assert!(
            red.text.contains("4111 1111 1111 1112"),
            "a number failing Luhn is not a card: {}",
            red.text
        );
        assert!(
            red.text.contains("Order 12345 ships in 2024"),
            "short numbers stay: {}",
            red.text
        );
        assert_eq!(
            red.text.matches("[EMAIL_1]").count(),
            2,
            "same value, same placeholder"
        );
        let answer = "Write to [EMAIL_1].";
        assert_eq!(
            Redactor::restore(answer, &red.map),
            "Write to ann.lee@example.com."
        );
        assert!(luhn("4111111111111111") && !luhn("4111111111111112"));
        assert!(iban_ok("GB82WEST12345698765432") && !iban_ok("GB82WEST12345698765433"));
        let custom = Redactor::default().with_rule(Rule {
            label: "EMPLOYEE",
            pattern: Regex::new(r"\bEMP-\d{6}\b").unwrap(),
            check: None,
        });
        assert_eq!(custom.redact("ask EMP-123456").text, "ask [EMPLOYEE_1]");
    }
}
