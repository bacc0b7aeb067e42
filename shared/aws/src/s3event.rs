//! S3 "object created" notifications as they reach a function: sent directly by S3, wrapped in SQS messages
//! (optionally inside SNS), or as EventBridge "Object Created" events.
//!
//! Keys in S3 notifications are form-encoded: `+` is a space, then percent-decoding applies (real S3 leaves `/`
//! and `=` alone, moto encodes them too; both decode the same). EventBridge sends keys as they are.

use serde_json::Value;

/// One object named by a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// Bucket name.
    pub bucket: String,
    /// The decoded key.
    pub key: String,
    /// ETag, when the notification carries it (without quotes).
    pub etag: Option<String>,
}

/// What invoked the function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// S3 invoked the function directly (asynchronous invocation).
    Direct(Vec<ObjectRef>),
    /// An SQS event source mapping: one entry per message, reported back by message id.
    Sqs(Vec<SqsMessage>),
    /// An EventBridge rule.
    EventBridge(Vec<ObjectRef>),
}

/// One SQS message and the objects its body names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsMessage {
    /// `messageId`, the `itemIdentifier` of a batch item failure.
    pub message_id: String,
    /// The objects, or why the body could not be read.
    pub objects: Result<Vec<ObjectRef>, String>,
}

/// An event of no shape this module knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unrecognised event: {0}")]
pub struct EventError(pub String);

/// Recognises the trigger and lists the objects created.
pub fn parse_trigger(event: &Value) -> Result<Trigger, EventError> {
    if event.get("detail-type").is_some() {
        return eventbridge_object(event).map(|o| Trigger::EventBridge(vec![o]));
    }
    let records = event
        .get("Records")
        .and_then(Value::as_array)
        .ok_or_else(|| EventError("no Records array and no EventBridge detail-type".into()))?;
    let from_sqs = records.first().and_then(|r| r.get("eventSource")).and_then(Value::as_str) == Some("aws:sqs");
    if from_sqs {
        let messages = records
            .iter()
            .map(|r| SqsMessage {
                message_id: r.get("messageId").and_then(Value::as_str).unwrap_or_default().to_owned(),
                objects: r
                    .get("body")
                    .and_then(Value::as_str)
                    .ok_or_else(|| "SQS message without a body".to_owned())
                    .and_then(objects_in_body),
            })
            .collect();
        return Ok(Trigger::Sqs(messages));
    }
    s3_objects(records).map(Trigger::Direct).map_err(EventError)
}

/// The objects of an SQS body: an S3 notification, the same inside an SNS envelope, or S3's test event (none).
fn objects_in_body(body: &str) -> Result<Vec<ObjectRef>, String> {
    let value: Value = serde_json::from_str(body).map_err(|e| format!("SQS body is not JSON: {e}"))?;
    if let Some(inner) = value.get("Message").and_then(Value::as_str) {
        return objects_in_body(inner);
    }
    if value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    if value.get("detail-type").is_some() {
        return eventbridge_object(&value).map(|o| vec![o]).map_err(|e| e.0);
    }
    let records = value.get("Records").and_then(Value::as_array).ok_or("SQS body has no Records")?;
    s3_objects(records)
}

/// `ObjectCreated:*` records of an S3 notification; other event names are left out.
fn s3_objects(records: &[Value]) -> Result<Vec<ObjectRef>, String> {
    let mut out = Vec::new();
    for r in records {
        let name = r.get("eventName").and_then(Value::as_str).unwrap_or("ObjectCreated:Put");
        if !name.starts_with("ObjectCreated") {
            continue;
        }
        let s3 = r.get("s3").ok_or("S3 record without s3")?;
        let bucket = s3.pointer("/bucket/name").and_then(Value::as_str).ok_or("S3 record without bucket name")?;
        let raw_key = s3.pointer("/object/key").and_then(Value::as_str).ok_or("S3 record without object key")?;
        let key = decode_key(raw_key).map_err(|e| format!("object key {raw_key:?}: {e}"))?;
        let etag = s3
            .pointer("/object/eTag")
            .and_then(Value::as_str)
            .map(|e| e.trim_matches('"').to_owned())
            .filter(|e| !e.is_empty());
        out.push(ObjectRef { bucket: bucket.to_owned(), key, etag });
    }
    Ok(out)
}

fn eventbridge_object(event: &Value) -> Result<ObjectRef, EventError> {
    let detail_type = event.get("detail-type").and_then(Value::as_str).unwrap_or_default();
    if detail_type != "Object Created" {
        return Err(EventError(format!("EventBridge detail-type {detail_type:?} is not \"Object Created\"")));
    }
    let bucket = event.pointer("/detail/bucket/name").and_then(Value::as_str);
    let key = event.pointer("/detail/object/key").and_then(Value::as_str);
    match (bucket, key) {
        (Some(bucket), Some(key)) => Ok(ObjectRef {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            etag: event
                .pointer("/detail/object/etag")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .filter(|e| !e.is_empty()),
        }),
        _ => Err(EventError("EventBridge event without detail.bucket.name and detail.object.key".into())),
    }
}

/// Decodes a form-encoded S3 key: `+` → space, then `%XX` → byte; the result must be UTF-8.
pub fn decode_key(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("bad percent escape")?;
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "decodes to invalid UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_form_decoded() {
        assert_eq!(
            decode_key("landing/locations/dt%3D2026-11-24/a+b%2Bc.ndjson.gz").unwrap(),
            "landing/locations/dt=2026-11-24/a b+c.ndjson.gz"
        );
        assert_eq!(decode_key("landing%2Flocations%2Fx%C3%A9").unwrap(), "landing/locations/xé");
        assert!(decode_key("bad%zz").is_err());
        assert!(decode_key("bad%").is_err());
        assert!(decode_key("%ff").is_err());
    }

    #[test]
    fn direct_sqs_sns_and_eventbridge_shapes() {
        // moto's shape: no userIdentity/requestParameters/sequencer, every character of the key encoded
        let s3 = json!({"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "lake"}, "object": {"key": "landing%2Flocations%2Fa+b.ndjson.gz", "eTag": "\"abc\"", "size": 10}}},
            {"eventSource": "aws:s3", "eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "lake"}, "object": {"key": "x"}}}]});
        let want = ObjectRef {
            bucket: "lake".into(),
            key: "landing/locations/a b.ndjson.gz".into(),
            etag: Some("abc".into()),
        };
        assert_eq!(parse_trigger(&s3).unwrap(), Trigger::Direct(vec![want.clone()]));

        let sqs = json!({"Records": [
            {"messageId": "m1", "eventSource": "aws:sqs", "body": s3.to_string()},
            {"messageId": "m2", "eventSource": "aws:sqs", "body": json!({"Type": "Notification", "Message": s3.to_string()}).to_string()},
            {"messageId": "m3", "eventSource": "aws:sqs", "body": "{\"Event\":\"s3:TestEvent\"}"},
            {"messageId": "m4", "eventSource": "aws:sqs", "body": "not json"}]});
        let Trigger::Sqs(messages) = parse_trigger(&sqs).unwrap() else { panic!("not SQS") };
        assert_eq!(messages[0].objects, Ok(vec![want.clone()]));
        assert_eq!(messages[1].objects, Ok(vec![want]));
        assert_eq!(messages[2].objects, Ok(vec![]));
        assert!(messages[3].objects.as_ref().unwrap_err().starts_with("SQS body is not JSON"));

        let eb = json!({"version": "0", "detail-type": "Object Created", "source": "aws.s3",
            "detail": {"bucket": {"name": "lake"}, "object": {"key": "landing/locations/a+b.ndjson.gz", "etag": "e1"}}});
        assert_eq!(
            parse_trigger(&eb).unwrap(),
            Trigger::EventBridge(vec![ObjectRef {
                bucket: "lake".into(),
                key: "landing/locations/a+b.ndjson.gz".into(),
                etag: Some("e1".into())
            }])
        );
        assert!(parse_trigger(&json!({"hello": 1})).is_err());
    }

    mod properties {
        #![allow(clippy::needless_pass_by_value)]
        use super::*;
        use proptest::prelude::*;

        /// Leaves that notifications carry, right and wrong: keys with escapes, ETags of any characters.
        fn leaf() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<i64>().prop_map(Value::from),
                proptest::collection::vec(any::<char>(), 0..10).prop_map(|c| json!(c.into_iter().collect::<String>())),
                proptest::sample::select(vec![
                    "%",
                    "%zz",
                    "a+b%2Fc",
                    "aws:sqs",
                    "aws:s3",
                    "ObjectCreated:Put",
                    "é\u{0}"
                ])
                .prop_map(|s| json!(s)),
            ]
        }

        fn record() -> impl Strategy<Value = Value> {
            (leaf(), leaf(), leaf(), leaf(), any::<bool>()).prop_map(|(bucket, key, etag, source, sqs)| {
                let s3 = json!({"eventSource": source, "s3": {"bucket": {"name": bucket}, "object": {"key": key, "eTag": etag}}});
                if sqs {
                    let body = json!({"Records": [s3]}).to_string();
                    json!({"eventSource": "aws:sqs", "messageId": "m", "body": body})
                } else {
                    s3
                }
            })
        }

        proptest! {
            /// Any event: objects, messages whose body is refused with a reason, or an unrecognised event.
            #[test]
            fn any_event_is_read_or_refused(records in proptest::collection::vec(prop_oneof![record(), leaf()], 0..4), detail in proptest::option::of(leaf())) {
                let mut event = json!({"Records": records});
                if let Some(d) = detail {
                    event = json!({"detail-type": "Object Created", "detail": {"bucket": {"name": &d}, "object": {"key": &d, "etag": "e"}}});
                }
                match parse_trigger(&event) {
                    Ok(Trigger::Sqs(messages)) => {
                        for m in messages {
                            if let Err(reason) = m.objects {
                                prop_assert!(!reason.is_empty());
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => prop_assert!(!e.0.is_empty()),
                }
            }
        }
    }
}
