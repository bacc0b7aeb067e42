//! S3 adapter: create-only puts for deterministic objects, whole and streaming gzip reads.

use async_compression::tokio::bufread::GzipDecoder;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::head_object::HeadObjectError;
use aws_sdk_s3::primitives::ByteStream;
use tokio::io::{AsyncBufRead, AsyncReadExt, BufReader};
use tracing::{debug, instrument, warn};

use crate::{Error, Result};
use fleetlake_core::ndjson::{Line, LineReader};

/// What a create-only put found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written.
    Created,
    /// An object with that key already existed and was left untouched.
    AlreadyExists,
}

/// What a HEAD of an object found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// User metadata (`x-amz-meta-*`).
    pub metadata: std::collections::HashMap<String, String>,
    /// The ETag, quoted as S3 sends it.
    pub etag: Option<String>,
}

/// An S3 client bound to one bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Store {
    /// A store for `bucket`.
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self { client, bucket: bucket.into() }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The underlying client.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// Writes `body` at `key` only if no object is there yet (`If-None-Match: *`, atomic on S3).
    ///
    /// Deterministically named objects use this: the first complete write wins, a retry or a concurrent
    /// duplicate sees [`PutOutcome::AlreadyExists`], and a published object never changes under its readers.
    pub async fn put_if_absent(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<PutOutcome> {
        self.put_object(key, body, content_type, &[], true).await
    }

    /// Writes `body` at `key`, replacing any object there.
    pub async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<()> {
        self.put_object(key, body, content_type, &[], false).await.map(|_| ())
    }

    /// Writes an object with user metadata (`x-amz-meta-*`), create-only or replacing.
    #[instrument(skip(self, body, metadata), fields(bucket = %self.bucket, bytes = body.len()))]
    pub async fn put_object(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        metadata: &[(&str, &str)],
        create_only: bool,
    ) -> Result<PutOutcome> {
        let mut req = self.put_request(key, body, content_type, metadata);
        if create_only {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e)
                if create_only
                    && (e.code() == Some("PreconditionFailed")
                        || e.raw_response().is_some_and(|r| r.status().as_u16() == 412)) =>
            {
                debug!(key, "object already exists");
                Ok(PutOutcome::AlreadyExists)
            }
            Err(e) => Err(self.error("PutObject", key, e)),
        }
    }

    /// A PutObject of `body` at `key` with its content type and user metadata, not sent yet.
    fn put_request(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        metadata: &[(&str, &str)],
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body));
        for (k, v) in metadata {
            req = req.metadata(*k, *v);
        }
        req
    }

    /// The user metadata of the object at `key`, or `None` if there is none (HeadObject; needs `s3:ListBucket` to
    /// tell "missing" from "forbidden").
    pub async fn metadata(&self, key: &str) -> Result<Option<std::collections::HashMap<String, String>>> {
        Ok(self.head(key).await?.map(|h| h.metadata))
    }

    /// The object's user metadata and ETag, or `None` if there is none.
    #[instrument(skip(self), fields(bucket = %self.bucket))]
    pub async fn head(&self, key: &str) -> Result<Option<Head>> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => Ok(Some(Head { metadata: out.metadata.unwrap_or_default(), etag: out.e_tag })),
            Err(e) if matches!(e.as_service_error(), Some(HeadObjectError::NotFound(_))) => Ok(None),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
            Err(e) => Err(self.error("HeadObject", key, e)),
        }
    }

    /// Writes `body` at `key` only if the object is still the one `read` found: `If-Match` its ETag, or
    /// `If-None-Match: *` when there was none. `Ok(false)` when it changed in between (412, a concurrent
    /// conditional write's 409 `ConditionalRequestConflict`, or 404 for an object deleted meanwhile): read it again
    /// and decide again.
    #[instrument(skip(self, body, metadata, read), fields(bucket = %self.bucket, bytes = body.len()))]
    pub async fn put_if_unchanged(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        metadata: &[(&str, &str)],
        read: Option<&Head>,
    ) -> Result<bool> {
        let mut req = self.put_request(key, body, content_type, metadata);
        req = match read.and_then(|h| h.etag.as_deref()) {
            Some(etag) => req.if_match(etag),
            None => req.if_none_match("*"),
        };
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if e.raw_response().is_some_and(|r| matches!(r.status().as_u16(), 404 | 409 | 412)) => {
                debug!(key, "the object changed since it was read");
                Ok(false)
            }
            Err(e) => Err(self.error("PutObject", key, e)),
        }
    }

    /// Reads a whole object into memory; for small objects only (use [`S3Store::gzip_lines`] for data).
    #[instrument(skip(self), fields(bucket = %self.bucket))]
    pub async fn get_bytes(&self, key: &str) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        self.open(key, None).await?.read_to_end(&mut body).await.map_err(|source| self.read_error(key, source))?;
        Ok(body)
    }

    /// Streams the lines of a gzip NDJSON object (concatenated gzip members allowed), holding one
    /// decompressed line at a time: a 1 GB object needs no 1 GB of memory.
    ///
    /// With `etag` (the version an event named), the read is pinned to it (`If-Match`): an object replaced since
    /// gives [`Error::Superseded`], never the newer content under the older identity.
    #[instrument(skip(self), fields(bucket = %self.bucket))]
    pub async fn gzip_lines(&self, key: &str, etag: Option<&str>) -> Result<ObjectLines> {
        let mut decoder = GzipDecoder::new(self.open(key, etag).await?);
        decoder.multiple_members(true);
        let reader: Box<dyn AsyncBufRead + Send + Unpin> = Box::new(BufReader::with_capacity(64 * 1024, decoder));
        Ok(ObjectLines { bucket: self.bucket.clone(), key: key.to_owned(), lines: LineReader::new(reader) })
    }

    async fn open(&self, key: &str, etag: Option<&str>) -> Result<impl AsyncBufRead + Send + Unpin + 'static> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some(etag) = etag {
            let Some(tag) = entity_tag(etag) else {
                return Err(Error::BadEtag { bucket: self.bucket.clone(), key: key.to_owned(), etag: etag.to_owned() });
            };
            req = req.if_match(tag);
        }
        match req.send().await {
            Ok(out) => Ok(out.body.into_async_read()),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => {
                Err(Error::Superseded { bucket: self.bucket.clone(), key: key.to_owned() })
            }
            Err(e)
                if matches!(e.as_service_error(), Some(GetObjectError::NoSuchKey(_)))
                    || e.code() == Some("NoSuchKey") =>
            {
                Err(Error::NotFound { bucket: self.bucket.clone(), key: key.to_owned() })
            }
            Err(e) => Err(self.error("GetObject", key, e)),
        }
    }

    fn error<E>(&self, op: &'static str, key: &str, e: E) -> Error
    where
        E: Into<aws_sdk_s3::Error> + std::error::Error + Send + Sync + 'static,
    {
        let message = DisplayErrorContext(&e).to_string();
        Error::S3 { op, bucket: self.bucket.clone(), key: key.to_owned(), message, source: Box::new(e.into()) }
    }

    fn read_error(&self, key: &str, source: std::io::Error) -> Error {
        Error::Read { bucket: self.bucket.clone(), key: key.to_owned(), source }
    }
}

/// An ETag as HTTP conditions want it: quoted (notifications carry it bare). `None` for a text that is no entity
/// tag (S3's are hex digits, with `-<parts>` for a multipart upload): a hostile or corrupt notification, which must
/// not reach a request header.
fn entity_tag(etag: &str) -> Option<String> {
    let bare = etag.strip_prefix('"').and_then(|e| e.strip_suffix('"')).unwrap_or(etag);
    let valid = !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_graphic() && b != b'"');
    valid.then(|| format!("\"{bare}\""))
}

/// Smallest part S3 accepts in a multipart upload (all parts but the last).
pub const MIN_PART_BYTES: usize = 5 << 20;

/// Writes one gzip object to S3 as it is produced: compressed bytes go out in multipart parts of `part_bytes`, so
/// memory holds one part whatever the object's size. A small object is sent as one PutObject. Create-only writes
/// use `If-None-Match: *` on the final request (PutObject or CompleteMultipartUpload); a write that fails or is
/// dropped half-way aborts its upload, so no part lingers (the bucket's lifecycle rule also removes strays).
pub struct GzipUpload {
    store: S3Store,
    key: String,
    content_type: String,
    metadata: Vec<(String, String)>,
    create_only: bool,
    part_bytes: usize,
    encoder: flate2::write::GzEncoder<Vec<u8>>,
    upload_id: Option<String>,
    parts: Vec<aws_sdk_s3::types::CompletedPart>,
}

impl std::fmt::Debug for GzipUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GzipUpload").field("key", &self.key).field("parts", &self.parts.len()).finish_non_exhaustive()
    }
}

impl GzipUpload {
    /// An upload of `key`; `part_bytes` is raised to S3's minimum part size if lower.
    pub fn new(
        store: &S3Store,
        key: &str,
        content_type: &str,
        metadata: &[(&str, &str)],
        create_only: bool,
        part_bytes: usize,
    ) -> Self {
        Self {
            store: store.clone(),
            key: key.to_owned(),
            content_type: content_type.to_owned(),
            metadata: metadata.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            create_only,
            part_bytes: part_bytes.max(MIN_PART_BYTES),
            encoder: flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()),
            upload_id: None,
            parts: Vec::new(),
        }
    }

    /// Compresses `bytes` into the object; sends a part when a full one is buffered.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        use std::io::Write as _;
        self.encoder.write_all(bytes)?;
        if self.encoder.get_ref().len() >= self.part_bytes {
            let part = std::mem::take(self.encoder.get_mut());
            self.send_part(part).await?;
        }
        Ok(())
    }

    /// Finishes the gzip stream and the object.
    pub async fn finish(mut self) -> Result<PutOutcome> {
        let tail = std::mem::replace(
            &mut self.encoder,
            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()),
        )
        .finish()?;
        let Some(upload_id) = self.upload_id.clone() else {
            let meta: Vec<(&str, &str)> = self.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            return self.store.put_object(&self.key, tail, &self.content_type, &meta, self.create_only).await;
        };
        if let Err(e) = self.send_part(tail).await {
            self.abort().await;
            return Err(e);
        }
        let client = self.store.client();
        let mut req = client
            .complete_multipart_upload()
            .bucket(self.store.bucket())
            .key(&self.key)
            .upload_id(&upload_id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder().set_parts(Some(self.parts.clone())).build(),
            );
        if self.create_only {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e)
                if self.create_only
                    && (e.code() == Some("PreconditionFailed")
                        || e.raw_response().is_some_and(|r| r.status().as_u16() == 412)) =>
            {
                self.abort().await;
                Ok(PutOutcome::AlreadyExists)
            }
            Err(e) => {
                let err = self.store.error("CompleteMultipartUpload", &self.key, e);
                self.abort().await;
                Err(err)
            }
        }
    }

    async fn send_part(&mut self, body: Vec<u8>) -> Result<()> {
        let client = self.store.client().clone();
        let bucket = self.store.bucket().to_owned();
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let mut req =
                    client.create_multipart_upload().bucket(&bucket).key(&self.key).content_type(&self.content_type);
                for (k, v) in &self.metadata {
                    req = req.metadata(k, v);
                }
                let out = req.send().await.map_err(|e| self.store.error("CreateMultipartUpload", &self.key, e))?;
                let id = out.upload_id().unwrap_or_default().to_owned();
                self.upload_id = Some(id.clone());
                id
            }
        };
        let number = self.parts.len() as i32 + 1;
        let sent = client
            .upload_part()
            .bucket(&bucket)
            .key(&self.key)
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await;
        match sent {
            Ok(out) => {
                self.parts
                    .push(aws_sdk_s3::types::CompletedPart::builder().part_number(number).set_e_tag(out.e_tag).build());
                Ok(())
            }
            Err(e) => {
                let err = self.store.error("UploadPart", &self.key, e);
                self.abort().await;
                Err(err)
            }
        }
    }

    /// Abandons the upload (best effort: the bucket's lifecycle rule removes what this cannot).
    pub async fn abort(&mut self) {
        if let Some(id) = self.upload_id.take() {
            let sent = self
                .store
                .client()
                .abort_multipart_upload()
                .bucket(self.store.bucket())
                .key(&self.key)
                .upload_id(id)
                .send()
                .await;
            if let Err(e) = sent {
                warn!(key = %self.key, error = %DisplayErrorContext(&e), "could not abort a multipart upload");
            }
        }
    }
}

/// The lines of one S3 object, read as they stream in.
#[derive(Debug)]
pub struct ObjectLines {
    bucket: String,
    key: String,
    lines: LineReader<Box<dyn AsyncBufRead + Send + Unpin>>,
}

impl ObjectLines {
    /// The next non-blank line, or `None` at the end of the object.
    pub async fn next_line(&mut self) -> Result<Option<Line>> {
        self.lines.next_line().await.map_err(|source| Error::Read {
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            source,
        })
    }
}
