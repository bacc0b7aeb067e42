//! The field reader: one JSON object's members into the columns' slots, keys borrowed from the line.

use super::*;

/// A JSON object key, borrowed from the line unless it has escapes (serde's own `Cow<str>` always copies).
pub(crate) struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A member's value as parsed: a scalar typed, anything else by its kind. Members whose value is itself read as
/// JSON later (`_source`, a change's `row`) are kept as text.
#[derive(Debug, Clone)]
pub(crate) enum Json<'a> {
    Null,
    Bool,
    Int(i64),
    /// An integer above `i64::MAX`.
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Object,
    Array,
    /// The value's JSON text, checked.
    Raw(&'a str),
}

impl Json<'_> {
    /// What the value is, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool => "a boolean",
            Json::Int(_) | Json::UInt(_) | Json::Float(_) => "a number",
            Json::Str(_) => "a string",
            Json::Object => "an object",
            Json::Array => "an array",
            Json::Raw(raw) => match raw.as_bytes().first() {
                Some(b'"') => "a string",
                Some(b'{') => "an object",
                Some(b'[') => "an array",
                Some(b't' | b'f') => "a boolean",
                Some(b'n') => "null",
                _ => "a number",
            },
        }
    }
}

/// Parses one value into [`Json`], validating (and skipping) nested values.
pub(crate) struct ValueSeed;

impl<'de> serde::de::DeserializeSeed<'de> for ValueSeed {
    type Value = Json<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Json<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Int(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(i64::try_from(v).map_or(Json::UInt(v), Json::Int))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Json<'de>, E> {
        Ok(Json::Float(v))
    }
    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Json::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
        Ok(Json::Object)
    }
}

/// The members of one JSON object: the value of each known name (a repeated key: the last occurrence wins, as in
/// every JSON map), and the unknown members as text, in the order they came.
pub(crate) struct Slots<'a> {
    pub(crate) values: SmallVec<[Option<Json<'a>>; 24]>,
    pub(crate) unknown: Vec<(Cow<'a, str>, &'a str)>,
    /// Members read, repeats included.
    pub(crate) members: usize,
}

/// The names an object is read into, with the slot each key position matched on the last object: lines of one
/// source share their key order, so a key is nearly always matched by one comparison.
#[derive(Debug)]
pub(crate) struct FieldSet {
    pub(crate) names: Vec<&'static str>,
    /// Per name: kept as text ([`Json::Raw`]) instead of parsed.
    pub(crate) raw: Vec<bool>,
    pub(crate) order: Vec<Option<usize>>,
}

impl FieldSet {
    /// Reads `names`, keeping the values of those in `raw` as text.
    pub(crate) fn new(names: impl IntoIterator<Item = &'static str>, raw: &[&str]) -> Self {
        let names: Vec<&'static str> = names.into_iter().collect();
        let raw = names.iter().map(|n| raw.contains(n)).collect();
        Self { names, raw, order: Vec::new() }
    }

    /// The slot of `name`.
    pub(crate) fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| *n == name).unwrap_or(usize::MAX)
    }

    /// The slot of the key at position `pos` of an object, if it is a known name.
    pub(crate) fn slot(&mut self, pos: usize, key: &str) -> Option<usize> {
        if let Some(&Some(s)) = self.order.get(pos) {
            if same_text(self.names[s], key) {
                return Some(s);
            }
        }
        let found = self.names.iter().position(|n| same_text(n, key));
        if pos < self.order.len() {
            self.order[pos] = found;
        } else if pos == self.order.len() {
            self.order.push(found);
        }
        found
    }

    /// Reads a JSON object's members into `slots` (filled in place: a row's slots are too large to pass around
    /// by value on every line). Plain lines take the fast path ([`plain`]); any other line, and every error, is
    /// serde_json's.
    pub(crate) fn parse<'a>(&mut self, text: &'a str, slots: &mut Slots<'a>) -> Result<(), RowError> {
        self.reset(slots);
        if plain::parse(self, text, slots).is_some() {
            return Ok(());
        }
        self.parse_with_serde(text, slots)
    }

    pub(crate) fn reset(&self, slots: &mut Slots<'_>) {
        slots.values.clear();
        slots.values.resize(self.names.len(), None);
        slots.unknown.clear();
        slots.members = 0;
    }

    /// [`FieldSet::parse`] by serde_json alone.
    pub(crate) fn parse_with_serde<'a>(&mut self, text: &'a str, slots: &mut Slots<'a>) -> Result<(), RowError> {
        self.reset(slots);
        let mut de = serde_json::Deserializer::from_str(text);
        serde::de::DeserializeSeed::deserialize(Fill { set: self, slots }, &mut de)
            .and_then(|()| de.end())
            .map_err(|e| RowError(format!("not a JSON object: {e}")))
    }
}

impl Slots<'_> {
    pub(crate) fn new() -> Self {
        Slots { values: SmallVec::new(), unknown: Vec::new(), members: 0 }
    }
}

/// `a == b` for the short texts of keys and groups, eight bytes at a time and inline: a call to the C library's
/// comparison for every key of every line cost more than the comparison itself.
#[inline]
pub(crate) fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        let word = |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap_or_default());
        if word(x) != word(y) {
            return false;
        }
    }
    ca.remainder().iter().zip(cb.remainder()).all(|(x, y)| x == y)
}

/// Reads one object into a [`FieldSet`]'s slots.
pub(crate) struct Fill<'s, 'a> {
    pub(crate) set: &'s mut FieldSet,
    pub(crate) slots: &'s mut Slots<'a>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Fill<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Fill<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Fill { set, slots } = self;
        let mut pos = 0;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match set.slot(pos, &key) {
                Some(s) if set.raw[s] => slots.values[s] = Some(Json::Raw(map.next_value::<&RawValue>()?.get())),
                Some(s) => slots.values[s] = Some(map.next_value_seed(ValueSeed)?),
                None => slots.unknown.push((key, map.next_value::<&RawValue>()?.get())),
            }
            pos += 1;
            slots.members += 1;
        }
        Ok(())
    }
}
