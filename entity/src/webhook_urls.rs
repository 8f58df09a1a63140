//! The column type of `channels.webhook_urls`.
//!
//! InsForge keeps webhook URLs in a PostgreSQL `text[]`, and existing triggers
//! read that column, so PostgreSQL keeps the array. SQLite has no arrays: there
//! the column is `TEXT` holding a JSON array. Reads accept both shapes; writes
//! go through [`WebhookUrls::to_value`], which picks the shape per backend.

use sea_orm::sea_query::{ArrayType, ColumnType, Nullable, RcOrArc, ValueType, ValueTypeErr};
use sea_orm::{ColIdx, DbBackend, DbErr, QueryResult, TryGetError, TryGetable, Value};
use serde::{Deserialize, Serialize};

/// The list of webhook URLs of one channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WebhookUrls(pub Vec<String>);

impl WebhookUrls {
    /// The value to bind for this list on `backend`: a `text[]` on
    /// PostgreSQL, a JSON text on SQLite.
    pub fn to_value(urls: Option<&WebhookUrls>, backend: DbBackend) -> Value {
        match (backend, urls) {
            (DbBackend::Postgres, Some(urls)) => urls.clone().into(),
            (DbBackend::Postgres, None) => Self::null(),
            (_, Some(urls)) => {
                // unwrap: a Vec<String> always serializes.
                Value::String(Some(Box::new(serde_json::to_string(&urls.0).unwrap())))
            }
            (_, None) => Value::String(None),
        }
    }
}

impl From<WebhookUrls> for Value {
    fn from(urls: WebhookUrls) -> Value {
        let items = urls.0.into_iter().map(Value::from).collect();
        Value::Array(ArrayType::String, Some(Box::new(items)))
    }
}

impl TryGetable for WebhookUrls {
    fn try_get_by<I: ColIdx>(res: &QueryResult, idx: I) -> Result<Self, TryGetError> {
        // PostgreSQL hands back a text[]; SQLite refuses arrays and is read as text.
        match Vec::<String>::try_get_by(res, idx) {
            Ok(urls) => Ok(WebhookUrls(urls)),
            Err(TryGetError::Null(column)) => Err(TryGetError::Null(column)),
            Err(TryGetError::DbErr(_)) => {
                let text = String::try_get_by(res, idx)?;
                serde_json::from_str(&text).map_err(|err| {
                    TryGetError::DbErr(DbErr::Type(format!(
                        "webhook_urls is not a JSON array: {err}"
                    )))
                })
            }
        }
    }
}

impl ValueType for WebhookUrls {
    fn try_from(value: Value) -> Result<Self, ValueTypeErr> {
        match value {
            Value::Array(_, Some(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(Some(url)) => Ok(*url),
                    _ => Err(ValueTypeErr),
                })
                .collect::<Result<_, _>>()
                .map(WebhookUrls),
            Value::String(Some(text)) => serde_json::from_str(&text).map_err(|_| ValueTypeErr),
            _ => Err(ValueTypeErr),
        }
    }

    fn type_name() -> String {
        "WebhookUrls".to_owned()
    }

    fn array_type() -> ArrayType {
        ArrayType::String
    }

    fn column_type() -> ColumnType {
        ColumnType::Array(RcOrArc::new(ColumnType::Text))
    }
}

impl Nullable for WebhookUrls {
    fn null() -> Value {
        Value::Array(ArrayType::String, None)
    }
}
