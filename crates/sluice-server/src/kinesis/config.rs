//! [`KinesisConfig`]: the `[kinesis]` section of the config file (the AWS Kinesis Data Streams
//! and Firehose JSON APIs served on `POST /`).

use serde::Deserialize;
use sluice_event::topic;

use super::streams::check_stream_name;

/// Default of [`KinesisConfig::max_streams`].
const DEFAULT_MAX_STREAMS: usize = 50;
/// Highest [`KinesisConfig::max_streams`]: every shard is a journal partition with its own
/// writer thread.
const MAX_MAX_STREAMS: usize = 1000;

/// The `[kinesis]` section. Every field has a default, so an empty section (or none) works.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KinesisConfig {
    /// The region named in stream ARNs. Default `us-east-1`.
    pub region: String,
    /// The 12-digit account id named in stream ARNs and error messages. Default
    /// `000000000000`.
    pub account_id: String,
    /// Stream names (and Firehose delivery stream names) that deliver into the pipeline, like
    /// `raw` itself: records put to them go through the collector into `raw`. Default none.
    pub ingest_streams: Vec<String>,
    /// Most streams `CreateStream` may make (user streams, not counting `raw`, `good`, `bad`
    /// and the ingest aliases); one more is refused with `LimitExceededException`. Streams
    /// that already exist keep working when the limit is lowered below their number. Default
    /// 50 (AWS's default quota of on-demand streams per account); `0` refuses every
    /// `CreateStream`.
    pub max_streams: usize,
}

impl Default for KinesisConfig {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
            ingest_streams: Vec::new(),
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

impl KinesisConfig {
    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let region_ok = !self.region.is_empty()
            && self.region.len() <= 64
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !region_ok {
            return Err(format!(
                "kinesis.region {:?} must be 1-64 lowercase letters, digits or '-'",
                self.region
            ));
        }
        if self.account_id.len() != 12 || !self.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "kinesis.account_id {:?} must be 12 digits",
                self.account_id
            ));
        }
        if self.max_streams > MAX_MAX_STREAMS {
            return Err(format!(
                "kinesis.max_streams {} must be at most {MAX_MAX_STREAMS}",
                self.max_streams
            ));
        }
        for (i, name) in self.ingest_streams.iter().enumerate() {
            check_stream_name(name).map_err(|e| format!("kinesis.ingest_streams: {e}"))?;
            if [topic::RAW, topic::GOOD, topic::BAD].contains(&name.as_str()) {
                return Err(format!(
                    "kinesis.ingest_streams: {name:?} is a pipeline topic, not an alias"
                ));
            }
            if self.ingest_streams[..i].contains(name) {
                return Err(format!("kinesis.ingest_streams: {name:?} is listed twice"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(KinesisConfig::default().validate().is_ok());
        let mut c = KinesisConfig {
            ingest_streams: vec!["events".into(), "clicks".into()],
            ..Default::default()
        };
        assert!(c.validate().is_ok());
        c.ingest_streams.push("events".into());
        assert!(c.validate().unwrap_err().contains("twice"));
        c.ingest_streams = vec!["good".into()];
        assert!(c.validate().unwrap_err().contains("pipeline topic"));
        c.ingest_streams = vec!["bad name".into()];
        assert!(c.validate().unwrap_err().contains("ingest_streams"));
        c.ingest_streams.clear();
        c.account_id = "12".into();
        assert!(c.validate().unwrap_err().contains("account_id"));
        c.account_id = "123456789012".into();
        c.region = "".into();
        assert!(c.validate().unwrap_err().contains("region"));
        let c = KinesisConfig {
            max_streams: 1001,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("max_streams"));
        assert_eq!(KinesisConfig::default().max_streams, 50);
    }
}
