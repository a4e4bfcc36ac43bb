//! How values cross into SQLite's columns and back: u64 as SQLite's signed integer (refused
//! past its range), enum names and JSON as text.

use rusqlite::types::Type;
use rusqlite::Row;
use serde::de::IntoDeserializer;

use super::error::StoreError;

pub(super) fn to_i64(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

pub(super) fn get_u64(row: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(i)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(i, v))
}

/// A text column parsed with serde: `json` for JSON, else as a plain enum name.
pub(super) fn parse_col<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    i: usize,
    json: bool,
) -> rusqlite::Result<T> {
    let text = row.get_ref(i)?.as_str()?;
    let bad = |e: Box<dyn std::error::Error + Send + Sync>| {
        rusqlite::Error::FromSqlConversionFailure(i, Type::Text, e)
    };
    if json {
        serde_json::from_str(text).map_err(|e| bad(Box::new(e)))
    } else {
        let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            text.into_deserializer();
        T::deserialize(de).map_err(|e| bad(Box::new(e)))
    }
}
