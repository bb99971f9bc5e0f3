//! PII redaction for text that leaves the machine (prompts to hosted providers): emails, phone
//! numbers, payment card numbers (Luhn-checked), IBANs (mod-97-checked) and national ids (US SSN,
//! UK National Insurance). Each match becomes a numbered placeholder (`[EMAIL_1]`); the mapping
//! lets an answer that quotes a placeholder be restored locally. Rules are a list, so a
//! deployment can add its own.
//!
//! Rules run on a folded view of the text ([`super::fold::Mode::Pii`]: full-width digits and
//! letters as ASCII, zero-width characters dropped), so `４１１１ １１１１ …` or a number with
//! zero-width spaces between its digits is found too; each match is mapped back to its span in
//! the original, which is what gets replaced (and what a placeholder restores to).
use regex::Regex;

use super::fold::{Folded, Mode};

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

/// A US SSN's area (not 000, 666 or 9xx), group (not 00) and serial (not 0000) are never
/// issued as zero or in the reserved ranges; NI-shaped matches pass.
fn national_id_ok(s: &str) -> bool {
    if !s.starts_with(|c: char| c.is_ascii_digit()) {
        return true;
    }
    let d: String = s.chars().filter(char::is_ascii_digit).collect();
    let (area, group, serial) = (&d[..3], &d[3..5], &d[5..]);
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// 9 to 15 digits (E.164's maximum), and not a dotted IPv4 address.
fn phone_ok(s: &str) -> bool {
    let dotted_quad = s.split('.').count() == 4
        && s.split('.')
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    (9..=15).contains(&digits(s).len()) && !dotted_quad
}

/// Whether a match starting at `at` is the fractional part of a decimal (`3.14159265358979`):
/// digits glued to `<digit>.` belong to a longer number, not to a phone number of their own.
fn fraction_digits(view: &str, at: usize) -> bool {
    let b = view.as_bytes();
    at >= 2
        && b.get(at).is_some_and(u8::is_ascii_digit)
        && b[at - 1] == b'.'
        && b[at - 2].is_ascii_digit()
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
                // Dots only in the printed 4-4-4-4 (and Amex 4-6-5) groupings: a free `.` would
                // make every long decimal (3.14159265358979) a candidate that Luhn passes one
                // time in ten.
                rule(
                    "CARD",
                    r"\b\d(?:[ -]?\d){12,18}\b|\b\d{4}(?:\.\d{4}){3}(?:\.\d{1,3})?\b|\b\d{4}\.\d{6}\.\d{5}\b",
                    Some(luhn),
                ),
                // SSNs with `-`, `.` or `/` (one separator used twice; the regex crate has no
                // back-references, hence the alternation). NI numbers in any case and spacing;
                // the prefix letters follow HMRC's rules except that QQ, its documented example
                // prefix, counts (forms and templates are full of it).
                rule(
                    "NATIONAL_ID",
                    r"\b\d{3}(?:-\d{2}-|\.\d{2}\.|/\d{2}/)\d{4}\b|(?i:\b[A-CEGHJ-TW-Z][A-CEGHJ-NP-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b)",
                    Some(national_id_ok),
                ),
                rule(
                    "PHONE",
                    r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){2,4}",
                    Some(phone_ok),
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
    /// Rules are tried in order, and a match overlapping an earlier rule's is ignored.
    pub fn redact(&self, text: &str) -> Redacted {
        let view = Folded::new(text, Mode::Pii);
        // (original range, placeholder), kept sorted by position.
        let mut taken: Vec<(std::ops::Range<usize>, String)> = Vec::new();
        let mut map: Vec<(String, String)> = Vec::new();
        for rule in &self.rules {
            for m in rule.pattern.find_iter(&view.text) {
                if m.is_empty()
                    || rule.check.is_some_and(|c| !c(m.as_str()))
                    || fraction_digits(&view.text, m.start())
                {
                    continue;
                }
                let range = view.original(m.range());
                let at = taken.partition_point(|(r, _)| r.start < range.start);
                let overlaps = |i: usize| {
                    taken
                        .get(i)
                        .is_some_and(|(r, _)| r.start < range.end && range.start < r.end)
                };
                if overlaps(at) || (at > 0 && overlaps(at - 1)) {
                    continue;
                }
                let original = text[range.clone()].to_owned();
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
                taken.insert(at, (range, placeholder));
            }
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for (r, p) in &taken {
            out.push_str(&text[last..r.start]);
            out.push_str(p);
            last = r.end;
        }
        out.push_str(&text[last..]);
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

    #[test]
    fn card_with_dots() {
        let red = Redactor::default().redact("card 4111.1111.1111.1111 ok");
        assert_eq!(red.text, "card [CARD_1] ok");
    }

    #[test]
    fn ssn_with_dots_and_slashes() {
        let r = Redactor::default();
        assert_eq!(r.redact("ssn 123.45.6789.").text, "ssn [NATIONAL_ID_1].");
        assert_eq!(r.redact("ssn 123/45/6789").text, "ssn [NATIONAL_ID_1]");
    }

    #[test]
    fn phone_with_dots() {
        let red = Redactor::default().redact("call 020.7946.0958 now");
        assert_eq!(red.text, "call [PHONE_1] now");
    }

    #[test]
    fn full_width_digits_map_back_to_the_original_span() {
        let text = "é card ４１１１ １１１１ １１１１ １１１１ end";
        let red = Redactor::default().redact(text);
        assert_eq!(red.text, "é card [CARD_1] end");
        assert_eq!(red.map[0].1, "４１１１ １１１１ １１１１ １１１１");
        assert_eq!(Redactor::restore(&red.text, &red.map), text);
    }

    #[test]
    fn full_width_ssn_and_zero_width_split_card() {
        let r = Redactor::default();
        assert_eq!(
            r.redact("ＳＳＮ １２３－４５－６７８９").text,
            "ＳＳＮ [NATIONAL_ID_1]"
        );
        let t = "pay 4111\u{200b}1111\u{200b}1111\u{200b}1111 now";
        assert_eq!(r.redact(t).text, "pay [CARD_1] now");
    }

    #[test]
    fn lower_case_ni_numbers() {
        let r = Redactor::default();
        for t in [
            "qq123456c",
            "qq 12 34 56 c",
            "Ab 12 34 56 c",
            "ＱＱ１２３４５６Ｃ",
        ] {
            let red = r.redact(&format!("NI {t}."));
            assert_eq!(red.text, "NI [NATIONAL_ID_1].", "{t}");
            assert_eq!(red.map[0].1, t);
        }
    }

    #[test]
    fn ordinary_numbers_are_not_pii() {
        let r = Redactor::default();
        for t in [
            "pi is 3.14159265358979 roughly",
            "version 1.2.3 of 2024",
            "on 12/05/2024 at 12:30",
            "host 192.168.100.200 is up",
            "code 123/00/4567 and 900/12/3456",
            "ratio 123/45/678 and 12/345/6789",
            "order ab1234567 shipped",
            "sku qd123456a, part zz 12 34 56 e",
            "superscript 10¹² and ①②③④⑤⑥⑦⑧⑨",
        ] {
            let red = r.redact(t);
            assert_eq!(red.text, t, "false positive: {:?}", red.map);
        }
    }
}
