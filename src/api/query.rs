//! Typed reads of query-string parameters, each failure a 400
//! `INVALID_INPUT` naming the parameter.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::ApiError;

/// The query string of one request.
pub struct QueryParams(pub HashMap<String, String>);

impl QueryParams {
    /// A uuid parameter, if present.
    pub fn uuid(&self, name: &str) -> Result<Option<Uuid>, ApiError> {
        self.0
            .get(name)
            .map(|value| {
                Uuid::parse_str(value)
                    .map_err(|_| ApiError::invalid_input(format!("{name}: Invalid uuid")))
            })
            .transpose()
    }

    /// A string parameter, if present and not empty. U+0000 is refused:
    /// PostgreSQL cannot compare text with it.
    pub fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.0.get(name).filter(|value| !value.is_empty()) {
            Some(value) if value.contains('\0') => Err(ApiError::invalid_input(format!(
                "{name}: must not contain the NUL character"
            ))),
            value => Ok(value.cloned()),
        }
    }

    /// An integer parameter within `min..=max`, or `default` when absent.
    pub fn integer(&self, name: &str, min: u64, max: u64, default: u64) -> Result<u64, ApiError> {
        let Some(value) = self.0.get(name) else {
            return Ok(default);
        };
        value
            .parse::<u64>()
            .ok()
            .filter(|number| (min..=max).contains(number))
            .ok_or_else(|| {
                ApiError::invalid_input(format!("{name}: must be an integer from {min} to {max}"))
            })
    }

    /// An RFC 3339 date-time parameter, if present.
    pub fn datetime(&self, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        self.0
            .get(name)
            .map(|value| {
                DateTime::parse_from_rfc3339(value)
                    .map(|instant| instant.with_timezone(&Utc))
                    .map_err(|_| ApiError::invalid_input(format!("{name}: Invalid datetime")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> QueryParams {
        QueryParams(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn integer_bounds_and_default() {
        let query = params(&[
            ("limit", "1000"),
            ("bad", "0"),
            ("big", "1001"),
            ("neg", "-1"),
        ]);
        assert_eq!(query.integer("limit", 1, 1000, 100), Ok(1000));
        assert_eq!(query.integer("missing", 1, 1000, 100), Ok(100));
        assert!(query.integer("bad", 1, 1000, 100).is_err());
        assert!(query.integer("big", 1, 1000, 100).is_err());
        assert!(query.integer("neg", 0, u64::MAX, 0).is_err());
    }

    #[test]
    fn datetime_accepts_offsets() {
        let query = params(&[("since", "2024-01-01T02:00:00+02:00"), ("bad", "yesterday")]);
        assert_eq!(
            query.datetime("since").unwrap().unwrap().to_rfc3339(),
            "2024-01-01T00:00:00+00:00"
        );
        assert_eq!(
            query.datetime("bad").unwrap_err().message,
            "bad: Invalid datetime"
        );
    }
}
