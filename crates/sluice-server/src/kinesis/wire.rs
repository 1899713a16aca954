//! The AWS JSON 1.1 wire format: error codes and their shape, answers, request parsing,
//! base64 blobs, SigV4 credentials, and the CBOR refusal.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::DeserializeOwned;
use sluice_event::ErrorKind;

/// The content type of every JSON answer (and of requests).
pub(crate) const JSON_1_1: &str = "application/x-amz-json-1.1";

/// The content type the Java SDKs use by default for Kinesis, which sluice does not decode.
pub(crate) const CBOR_1_1: &str = "application/x-amz-cbor-1.1";

/// What to tell a client that sent CBOR.
pub(crate) const CBOR_REFUSAL: &str = "sluice speaks the Kinesis JSON protocol only, not CBOR: \
     set AWS_CBOR_DISABLE=1 (or -Dcom.amazonaws.sdk.disableCbor=true) for the Java SDK v1 and \
     KCL 1.x, or CBOR_ENABLED=false (or -Daws.cborEnabled=false) for the Java SDK v2, KCL 2.x, \
     Flink and Spark";

/// An AWS error answer: its `__type` code and message. Client errors are HTTP 400, as AWS
/// answers them; SDKs read the code from `x-amzn-ErrorType` or `__type`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AwsError {
    /// No such stream or shard.
    #[error("{0}")]
    ResourceNotFound(String),
    /// The stream exists, or is part of the pipeline.
    #[error("{0}")]
    ResourceInUse(String),
    /// A parameter is out of range or malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// Over a count or size limit.
    #[error("{0}")]
    LimitExceeded(String),
    /// Back off and retry (SDKs retry it).
    #[error("{0}")]
    ProvisionedThroughputExceeded(String),
    /// The shard iterator is too old.
    #[error("{0}")]
    ExpiredIterator(String),
    /// The pagination token is too old.
    #[error("{0}")]
    ExpiredNextToken(String),
    /// Not allowed on this stream.
    #[error("{0}")]
    AccessDenied(String),
    /// A required member is missing.
    #[error("{0}")]
    Validation(String),
    /// The body is not JSON of the expected shape (or is CBOR).
    #[error("{0}")]
    Serialization(String),
    /// No such operation.
    #[error("{0}")]
    UnknownOperation(String),
    /// The credential is missing, unknown or revoked (401).
    #[error("{0}")]
    UnrecognizedClient(String),
    /// The credential is valid but may not make this call (403).
    #[error("{0}")]
    Forbidden(String),
    /// The body is over the size limit.
    #[error("{0}")]
    TooLarge(String),
    /// Temporarily unable to take records (journal trouble); retry later.
    #[error("{0}")]
    ServiceUnavailable(String),
    /// A bug or an unexpected failure.
    #[error("{0}")]
    InternalFailure(String),
}

impl AwsError {
    /// The `__type` code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::ResourceNotFound(_) => "ResourceNotFoundException",
            Self::ResourceInUse(_) => "ResourceInUseException",
            Self::InvalidArgument(_) => "InvalidArgumentException",
            Self::LimitExceeded(_) => "LimitExceededException",
            Self::ProvisionedThroughputExceeded(_) => "ProvisionedThroughputExceededException",
            Self::ExpiredIterator(_) => "ExpiredIteratorException",
            Self::ExpiredNextToken(_) => "ExpiredNextTokenException",
            Self::AccessDenied(_) | Self::Forbidden(_) => "AccessDeniedException",
            Self::Validation(_) => "ValidationException",
            Self::Serialization(_) => "SerializationException",
            Self::UnknownOperation(_) => "UnknownOperationException",
            Self::UnrecognizedClient(_) => "UnrecognizedClientException",
            Self::TooLarge(_) => "ValidationException",
            Self::ServiceUnavailable(_) => "ServiceUnavailableException",
            Self::InternalFailure(_) => "InternalFailure",
        }
    }

    /// The classification, for status codes and metrics.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            Self::ResourceNotFound(_) => ErrorKind::NotFound,
            Self::ResourceInUse(_) => ErrorKind::Conflict,
            Self::UnrecognizedClient(_) | Self::AccessDenied(_) | Self::Forbidden(_) => {
                ErrorKind::Unauthorized
            }
            Self::TooLarge(_) => ErrorKind::TooLarge,
            Self::ProvisionedThroughputExceeded(_) => ErrorKind::Overloaded,
            Self::ServiceUnavailable(_) => ErrorKind::Unavailable,
            Self::InternalFailure(_) => ErrorKind::Internal,
            _ => ErrorKind::Invalid,
        }
    }

    /// HTTP status: 400 for every client error (throttling included) as AWS answers, except a
    /// refused credential: 401 (unknown) or 403 (may not), as on every other route (SDKs read
    /// the error type from the body, and do not retry either status); 413 for an oversized
    /// body, 503 and 500 for server trouble.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::UnrecognizedClient(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::InternalFailure(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The error for a journal failure on a whole request.
    pub(crate) fn from_journal(e: &sluice_journal::JournalError) -> Self {
        match e.kind() {
            ErrorKind::Unavailable | ErrorKind::Overloaded => {
                Self::ServiceUnavailable(e.to_string())
            }
            ErrorKind::Invalid | ErrorKind::TooLarge => Self::InvalidArgument(e.to_string()),
            _ => Self::InternalFailure(e.to_string()),
        }
    }

    /// The JSON answer.
    pub(crate) fn into_response(self, request_id: &str) -> Response {
        let body = serde_json::json!({ "__type": self.code(), "message": self.to_string() });
        let mut resp = (self.status(), body.to_string()).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_1_1));
        h.insert("x-amzn-ErrorType", HeaderValue::from_static(self.code()));
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert("x-amzn-RequestId", v);
        }
        if matches!(
            self,
            Self::ProvisionedThroughputExceeded(_) | Self::ServiceUnavailable(_)
        ) {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// A successful JSON answer.
pub(crate) fn ok_response(body: &serde_json::Value, request_id: &str) -> Response {
    let mut resp = (StatusCode::OK, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_1_1));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-RequestId", v);
    }
    resp
}

/// The answer to a CBOR request: a 400 `SerializationException` saying how to switch the SDK
/// to JSON, with the body in CBOR (a map of `__type` and `message`) so that the Java SDKs,
/// which parse error bodies with the request's protocol, show the message.
pub(crate) fn cbor_refusal(request_id: &str) -> Response {
    let err = AwsError::Serialization(CBOR_REFUSAL.into());
    let body = cbor_error_body(err.code(), CBOR_REFUSAL);
    let mut resp = (StatusCode::BAD_REQUEST, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CBOR_1_1));
    h.insert("x-amzn-ErrorType", HeaderValue::from_static(err.code()));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-RequestId", v);
    }
    resp
}

/// `{"__type": code, "message": message}` in CBOR (RFC 8949): a definite map of two text pairs.
pub(crate) fn cbor_error_body(code: &str, message: &str) -> Vec<u8> {
    let mut out = vec![0xa2];
    for s in ["__type", code, "message", message] {
        cbor_text(&mut out, s);
    }
    out
}

fn cbor_text(out: &mut Vec<u8>, s: &str) {
    // Major type 3 (text string), then the length in the shortest form.
    let len = s.len() as u64;
    match len {
        0..=23 => out.push(0x60 | len as u8),
        24..=0xff => out.extend_from_slice(&[0x78, len as u8]),
        0x100..=0xffff => {
            out.push(0x79);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x7a);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(s.as_bytes());
}

/// Whether the request is CBOR-encoded.
pub(crate) fn is_cbor(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| {
            c.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-amz-cbor")
        })
}

/// Parses a request body (empty means `{}`); a syntax or type error is a
/// `SerializationException`.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, AwsError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| AwsError::Serialization(format!("request body is not the expected json: {e}")))
}

/// A required member, or a `ValidationException` naming it.
pub(crate) fn required<T>(value: Option<T>, member: &str) -> Result<T, AwsError> {
    value.ok_or_else(|| {
        AwsError::Validation(format!(
            "1 validation error detected: Value null at '{member}' failed to satisfy constraint: \
             Member must not be null"
        ))
    })
}

/// Base64 as SDKs send it: the standard alphabet, padding optional.
const BLOB: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes a `Data` blob, refusing one over `limit` bytes.
pub(crate) fn decode_blob(b64: &str, limit: usize, what: &str) -> Result<Vec<u8>, AwsError> {
    // Checked before decoding, so an oversized blob costs no allocation.
    if b64.len() / 4 * 3 > limit + 3 {
        return Err(blob_too_large(b64.len() / 4 * 3, limit, what));
    }
    let data = BLOB
        .decode(b64)
        .map_err(|e| AwsError::Serialization(format!("{what} is not valid base64: {e}")))?;
    if data.len() > limit {
        return Err(blob_too_large(data.len(), limit, what));
    }
    Ok(data)
}

fn blob_too_large(len: usize, limit: usize, what: &str) -> AwsError {
    AwsError::Validation(format!(
        "1 validation error detected: Value at '{what}' failed to satisfy constraint: Member \
         must have length less than or equal to {limit} (it has {len} bytes)"
    ))
}

/// Encodes a blob for an answer.
pub(crate) fn encode_blob(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// The access key id of a SigV4 `Authorization` header
/// (`AWS4-HMAC-SHA256 Credential=AKID/date/region/service/aws4_request, SignedHeaders=…,
/// Signature=…`). `None` when the header is not SigV4 or has no credential.
pub(crate) fn sigv4_access_key_id(authorization: &str) -> Option<&str> {
    let rest = authorization.trim().strip_prefix("AWS4-HMAC-SHA256")?;
    let credential = rest
        .split(',')
        .map(str::trim)
        .find_map(|part| part.strip_prefix("Credential="))?;
    let akid = credential.split('/').next()?.trim();
    (!akid.is_empty()).then_some(akid)
}

/// The credential a request presents (write key or token): the SigV4 access key id, else what
/// [`crate::auth::header_key`] reads (Basic, Bearer, `X-Write-Key`).
pub(crate) fn request_key(headers: &HeaderMap) -> Option<String> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(a) = authorization
        && a.trim_start().starts_with("AWS4-")
    {
        return sigv4_access_key_id(a).map(str::to_string);
    }
    crate::auth::header_key(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigv4_access_key_id_is_read_from_the_credential() {
        let h = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261101/ap-south-1/kinesis/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=abc123";
        assert_eq!(sigv4_access_key_id(h), Some("AKIDEXAMPLE"));
        // Some SDKs put no space after the commas, and the credential need not come first.
        let h = "AWS4-HMAC-SHA256 SignedHeaders=host,Credential=sk_web_123/20261101/us-east-1/firehose/aws4_request,Signature=0";
        assert_eq!(sigv4_access_key_id(h), Some("sk_web_123"));
        for bad in [
            "",
            "Bearer x",
            "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=0",
            "AWS4-HMAC-SHA256 Credential=/20261101/us-east-1/kinesis/aws4_request",
        ] {
            assert_eq!(sigv4_access_key_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn request_key_prefers_sigv4_and_falls_back_to_other_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=AK/20261101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=0",
            ),
        );
        assert_eq!(request_key(&h).as_deref(), Some("AK"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("AWS4-HMAC-SHA256 garbage"),
        );
        assert_eq!(request_key(&h), None);
        let mut h = HeaderMap::new();
        h.insert("x-write-key", HeaderValue::from_static("k1"));
        assert_eq!(request_key(&h).as_deref(), Some("k1"));
    }

    #[test]
    fn cbor_requests_are_refused_with_a_cbor_error_naming_the_switches() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CBOR_1_1));
        assert!(is_cbor(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_1_1));
        assert!(!is_cbor(&h));

        let resp = cbor_refusal("rid");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()["x-amzn-ErrorType"], "SerializationException");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], CBOR_1_1);
        assert!(CBOR_REFUSAL.contains("AWS_CBOR_DISABLE=1"));
        assert!(CBOR_REFUSAL.contains("CBOR_ENABLED=false"));
        assert!(CBOR_REFUSAL.contains("-Daws.cborEnabled=false"));

        // The body decodes as a CBOR map of two text strings.
        let body = cbor_error_body("SerializationException", CBOR_REFUSAL);
        assert_eq!(body[0], 0xa2);
        let mut at = 1;
        let mut texts = Vec::new();
        for _ in 0..4 {
            let head = body[at];
            assert_eq!(head >> 5, 3, "a text string");
            let (len, skip) = match head & 0x1f {
                n @ 0..=23 => (n as usize, 1),
                24 => (body[at + 1] as usize, 2),
                25 => (u16::from_be_bytes([body[at + 1], body[at + 2]]) as usize, 3),
                other => panic!("length form {other}"),
            };
            at += skip;
            texts.push(
                std::str::from_utf8(&body[at..at + len])
                    .unwrap()
                    .to_string(),
            );
            at += len;
        }
        assert_eq!(at, body.len());
        assert_eq!(
            texts,
            ["__type", "SerializationException", "message", CBOR_REFUSAL]
        );
    }

    #[test]
    fn errors_have_the_aws_shape() {
        let resp = AwsError::ResourceNotFound("Stream x not found.".into()).into_response("r1");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            resp.headers()["x-amzn-ErrorType"],
            "ResourceNotFoundException"
        );
        assert_eq!(resp.headers()["x-amzn-RequestId"], "r1");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], JSON_1_1);
        let resp = AwsError::ProvisionedThroughputExceeded("slow".into()).into_response("r");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert!(resp.headers().contains_key(header::RETRY_AFTER));
        assert_eq!(
            AwsError::InternalFailure(String::new()).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn blobs_decode_with_or_without_padding_and_respect_limits() {
        assert_eq!(decode_blob("aGk=", 10, "Data").unwrap(), b"hi");
        assert_eq!(decode_blob("aGk", 10, "Data").unwrap(), b"hi");
        assert!(matches!(
            decode_blob("!!", 10, "Data"),
            Err(AwsError::Serialization(_))
        ));
        assert!(matches!(
            decode_blob(&encode_blob(&[0u8; 11]), 10, "Data"),
            Err(AwsError::Validation(_))
        ));
        assert!(matches!(
            decode_blob(&"A".repeat(4000), 10, "Data"),
            Err(AwsError::Validation(_))
        ));
    }

    #[test]
    fn empty_bodies_parse_as_empty_objects_and_bad_json_is_a_serialization_error() {
        #[derive(serde::Deserialize)]
        struct In {
            #[serde(rename = "Limit")]
            limit: Option<u32>,
        }
        assert!(parse::<In>(b"").unwrap().limit.is_none());
        assert_eq!(parse::<In>(br#"{"Limit":3}"#).unwrap().limit, Some(3));
        assert!(matches!(
            parse::<In>(b"{nope"),
            Err(AwsError::Serialization(_))
        ));
        assert!(matches!(
            parse::<In>(br#"{"Limit":"x"}"#),
            Err(AwsError::Serialization(_))
        ));
    }
}
