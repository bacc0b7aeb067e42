//! The fast path of the line reader: the common shape of a line — one JSON object whose keys and string values
//! have no escapes and whose values are scalars (nested values only where the reader keeps text) — read into slots
//! without serde's per-value dispatch.
//!
//! It only ever *gives up*: on anything outside that shape (an escape, a control character, a nested value in a
//! typed slot, a number serde_json would read differently, any syntax error) it returns `None` and the line is read
//! by serde_json, which then decides every value and every error message. So for a line it accepts, the slots are
//! exactly what serde_json would give (a differential test holds it to that).

use super::{FieldSet, Json, Slots};

/// Reads `text` into `slots`, or `None` when the line is not in the plain shape (`slots` is then left partly
/// filled: the caller starts over).
pub(super) fn parse<'a>(fields: &mut FieldSet, text: &'a str, slots: &mut Slots<'a>) -> Option<()> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        let mut pos = 0;
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let end = string_end(b, i + 1)?;
            let key = text.get(i + 1..end)?;
            i = skip_ws(b, end + 1);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = skip_ws(b, i + 1);
            match fields.slot(pos, key) {
                Some(s) if !fields.raw[s] => {
                    let (value, next) = scalar(text, i)?;
                    slots.values[s] = Some(value);
                    i = next;
                }
                slot => {
                    let next = value_end(text, i, 0)?;
                    let raw = text.get(i..next)?;
                    match slot {
                        Some(s) => slots.values[s] = Some(Json::Raw(raw)),
                        None => slots.unknown.push((key.into(), raw)),
                    }
                    i = next;
                }
            }
            pos += 1;
            slots.members += 1;
            i = skip_ws(b, i);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_ws(b, i) == b.len()).then_some(())
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The index of the quote closing a string whose text starts at `start`; `None` at an escape, a control character
/// or the end of the line. Eight bytes at a time: a byte is flagged when it is `"`, `\` or below 0x20, and the
/// lowest flagged byte is always a real one (a borrow only runs upwards from a flagged byte).
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().ok()?);
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        let flagged = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (x.wrapping_sub(ONES * 0x20) & !x))
            & HIGHS;
        if flagged != 0 {
            i += (flagged.trailing_zeros() / 8) as usize;
            return (b[i] == b'"').then_some(i);
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        match c {
            b'"' => return Some(i),
            b'\\' | 0..=0x1f => return None,
            _ => i += 1,
        }
    }
    None
}

/// A scalar value at `i` (string, number, `true`, `false`, `null`) and the index after it.
fn scalar(text: &str, i: usize) -> Option<(Json<'_>, usize)> {
    let b = text.as_bytes();
    match *b.get(i)? {
        b'"' => {
            let end = string_end(b, i + 1)?;
            Some((Json::Str(text.get(i + 1..end)?.into()), end + 1))
        }
        b'-' | b'0'..=b'9' => number(text, i),
        b'n' => b[i..].starts_with(b"null").then_some((Json::Null, i + 4)),
        b't' => b[i..].starts_with(b"true").then_some((Json::Bool, i + 4)),
        b'f' => b[i..].starts_with(b"false").then_some((Json::Bool, i + 5)),
        _ => None,
    }
}

/// A number by JSON's grammar. Integers of up to 18 digits are read here (they always fit an `i64`); `-0` and
/// longer integers are left to serde_json, which reads them as floats or `u64`. Anything with a fraction or an
/// exponent is read by Rust's parser, correctly rounded like serde_json's `float_roundtrip`; a value out of range
/// is left to serde_json, which refuses it.
fn number(text: &str, start: usize) -> Option<(Json<'_>, usize)> {
    let b = text.as_bytes();
    let mut i = start;
    let negative = b[i] == b'-';
    if negative {
        i += 1;
    }
    let digits_start = i;
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits_end(b, i),
        _ => return None,
    }
    let int_end = i;
    let mut float = false;
    // The fraction's digits, when the number has a fraction and no exponent.
    let mut fraction = None;
    if b.get(i) == Some(&b'.') {
        float = true;
        let from = i + 1;
        i = digits_end(b, from);
        if i == from {
            return None;
        }
        fraction = Some(from..i);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        fraction = None;
        float = true;
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let from = i;
        i = digits_end(b, from);
        if i == from {
            return None;
        }
    }
    if b.get(i).is_some_and(u8::is_ascii_digit) {
        return None; // a leading zero followed by digits
    }
    if float {
        let v = match decimal_fast(b, digits_start, int_end, fraction) {
            Some(v) if negative => -v,
            Some(v) => v,
            None => text.get(start..i)?.parse().ok()?,
        };
        return v.is_finite().then_some((Json::Float(v), i));
    }
    if int_end - digits_start > 18 {
        return None;
    }
    let magnitude = b[digits_start..int_end].iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    match (negative, magnitude) {
        (true, 0) => None,
        (true, m) => Some((Json::Int(-m), i)),
        (false, m) => Some((Json::Int(m), i)),
    }
}

/// The index after the run of ASCII digits that starts at `i` (`i` itself when there is none).
fn digits_end(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// Powers of ten a double holds exactly.
const EXACT_POWERS_OF_TEN: [f64; 16] =
    [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];

/// `int.fraction` (digits, no sign, no exponent) when it has at most 15 digits in all: the digits as an integer
/// and the power of ten are then both exact doubles, and one division rounds the quotient correctly — the same
/// double any correct parser gives (Clinger's fast path). `None` otherwise.
fn decimal_fast(b: &[u8], int_start: usize, int_end: usize, fraction: Option<std::ops::Range<usize>>) -> Option<f64> {
    let fraction = fraction?;
    let digits = (int_end - int_start) + fraction.len();
    if digits > 15 {
        return None;
    }
    let mantissa =
        b[int_start..int_end].iter().chain(&b[fraction.clone()]).fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    // At most 15 digits: below 2^53, so exact as a double.
    Some(mantissa as f64 / EXACT_POWERS_OF_TEN[fraction.len()])
}

/// Nesting the plain reader follows before it leaves a value to serde_json.
const MAX_DEPTH: usize = 16;

/// The index after the value at `i`, checked by the same plain rules: objects and arrays of plain values.
fn value_end(text: &str, mut i: usize, depth: usize) -> Option<usize> {
    let b = text.as_bytes();
    let (close, object) = match *b.get(i)? {
        b'{' => (b'}', true),
        b'[' => (b']', false),
        _ => return scalar(text, i).map(|(_, end)| end),
    };
    if depth >= MAX_DEPTH {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&close) {
        return Some(i + 1);
    }
    loop {
        if object {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            i = skip_ws(b, string_end(b, i + 1)? + 1);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = skip_ws(b, i + 1);
        }
        i = skip_ws(b, value_end(text, i, depth + 1)?);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(&c) if c == close => return Some(i + 1),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slots as text: equal texts mean equal values, bit for bit (floats print their shortest round trip).
    fn read(fields: &mut FieldSet, text: &str, fast: bool) -> Result<String, String> {
        let mut slots = Slots::new();
        let result = if fast { fields.parse(text, &mut slots) } else { fields.parse_with_serde(text, &mut slots) };
        result.map(|()| format!("{:?} {:?}", slots.values, slots.unknown)).map_err(|e| e.0)
    }

    fn fields() -> FieldSet {
        FieldSet::new(["id", "n", "x", "s", "flag", "_source"], &["_source"])
    }

    fn assert_same(fields: &mut FieldSet, line: &str) {
        assert_eq!(read(fields, line, true), read(fields, line, false), "{line:?}");
    }

    #[test]
    fn plain_lines_are_read_here_and_others_fall_back() {
        let mut f = fields();
        let mut slots = Slots::new();
        slots.values.resize(6, None);
        let plain =
            r#"{"id":"TU-1","n":-12,"x":1.5e2,"s":null,"flag":true,"_source":{"topic":"t","offset":3},"u":[1]}"#;
        assert!(parse(&mut f, plain, &mut slots).is_some());
        for line in [
            r#"{"id":"T\u0055"}"#,
            r#"{"n":-0}"#,
            r#"{"n":1234567890123456789}"#,
            r#"{"x":1e400}"#,
            r#"{"x":{"a":1}}"#,
            "{\"id\":\"a\tb\"}",
            r#"{"n":01}"#,
            r#"{"n":1}x"#,
        ] {
            slots.values.clear();
            slots.values.resize(6, None);
            assert!(parse(&mut f, line, &mut slots).is_none(), "{line}");
        }
    }

    #[test]
    fn short_decimals_are_rounded_as_rusts_parser_rounds_them() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..200_000 {
            let int_digits = rng.usize(1..8);
            let longest = 15 - int_digits + rng.usize(0..3);
            let frac_digits = rng.usize(1..=longest);
            let mut text = if rng.bool() { String::from("-") } else { String::new() };
            for k in 0..int_digits {
                let d = if k == 0 && int_digits > 1 { rng.u8(1..10) } else { rng.u8(0..10) };
                text.push(char::from(b'0' + d));
            }
            text.push('.');
            for _ in 0..frac_digits {
                text.push(char::from(b'0' + rng.u8(0..10)));
            }
            let Some((Json::Float(v), end)) = number(&text, 0) else { panic!("{text} not read") };
            assert_eq!(end, text.len());
            assert_eq!(v.to_bits(), text.parse::<f64>().unwrap().to_bits(), "{text}");
        }
    }

    #[test]
    fn every_line_reads_as_serde_json_reads_it() {
        let mut f = fields();
        let cases = [
            r#"{}"#,
            r#" { } "#,
            r#"{"id":"TU-1","n":7,"x":0.1,"s":"a","flag":false,"_source":{"topic":"fleet","partition":2}}"#,
            r#"{ "id" : "ü€😀" , "n" : -9 , "x" : -0.0 , "zz" : [ 1 , {"a":null} ] }"#,
            r#"{"x":1e-400,"n":999999999999999999,"s":"\"q\""}"#,
            r#"{"x":2.2250738585072011e-308,"n":-999999999999999999}"#,
            r#"{"x":0.30000000000000004441,"n":9223372036854775807,"s":"x"}"#,
            r#"{"x":1E+2,"n":1e2,"s":1,"id":2}"#,
            r#"{"n":1,"n":2,"u":1,"u":2}"#,
            r#"{"_source":null,"id":"a"}"#,
            r#"{"_source":"text"}"#,
            r#"{"id":"a",}"#,
            r#"{"id":"a""n":1}"#,
            r#"{"id":"a"} {"#,
            r#"{"x":.5}"#,
            r#"{"x":5.}"#,
            r#"{"x":+5}"#,
            r#"{"flag":tru}"#,
            r#"{"flag":nulls}"#,
            r#"[{"id":"a"}]"#,
            r#""id""#,
            "{\"id\":\"a\u{1}\"}",
            "{\"id\":\"a\u{7f}\"}",
            "{\t\"id\"\r\n:\"a\"}",
            r#"{"id":"a\\b","x":1}"#,
            r#"{"id":"abcdefgh\"ijk"}"#,
        ];
        for line in cases {
            assert_same(&mut f, line);
        }
        // Mutations of a plain line: bytes deleted, duplicated or replaced by JSON's special characters.
        let base = r#"{"id":"TU-000123","n":1763892900001,"x":-53.12345,"s":"maritime","flag":true,"_source":{"topic":"fleet.locations","partition":5,"offset":42},"extra":{"k":[1,2.5,"x"]}}"#;
        let specials = b"\"\\{}[]:,. -+eE0123456789ntfu\t\x01";
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let mut bytes = base.as_bytes().to_vec();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(0..bytes.len());
                match rng.u8(0..3) {
                    0 => {
                        bytes.remove(at);
                    }
                    1 => bytes.insert(at, bytes[at]),
                    _ => bytes[at] = specials[rng.usize(0..specials.len())],
                }
            }
            if let Ok(line) = std::str::from_utf8(&bytes) {
                assert_same(&mut f, line);
            }
        }
    }
}
