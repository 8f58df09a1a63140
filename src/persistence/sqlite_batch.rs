//! The writer's batch on SQLite, bound straight through sqlx: the rows,
//! the audience corrections and finished webhooks in one transaction.
//!
//! Through sea-orm each row's values were built as sea-query values, cloned
//! for sqlx and copied once more into its arguments: about 25 allocations
//! per message, a quarter of an acked publish's (heaptrack, 2026-12-03).
//! Here ids and strings are bound borrowed from the rows, with the same
//! sqlx encoders sea-orm uses (ids as 16-byte blobs, times as RFC 3339
//! text), so the stored bytes are the same.

use entity::messages;
use sea_orm::error::ConnAcquireErr;
use sea_orm::sqlx::sqlite::{SqliteArguments, SqliteConnection};
use sea_orm::sqlx::{self, Arguments, Sqlite};
use sea_orm::{DatabaseConnection, DbErr, RuntimeErr};
use uuid::Uuid;

use super::messages::{by_count, sqlite_insert_text, statement_sizes, MAX_IDS_PER_UPDATE};
use super::webhooks::WebhookOutcome;
use super::PersistenceError;

/// Inserts `batch` (rows with webhook URLs marked as the webhook backlog),
/// adds `audience` to `ws_audience_count` of earlier rows and records
/// finished `webhooks`, in one transaction, so the pages they touch go to
/// the log once. Rows and ids go in chunks of power-of-two sizes, whose
/// few statements stay prepared (preparing one per batch size cost more
/// than running it).
///
/// # Errors
/// Database failures (nothing is written); [`PersistenceError::Duplicate`]
/// if an id exists.
pub async fn write(
    db: &DatabaseConnection,
    batch: &[&messages::Model],
    audience: &[(Uuid, i32)],
    webhooks: &[WebhookOutcome],
) -> Result<(), PersistenceError> {
    let mut txn = db
        .get_sqlite_connection_pool()
        .begin()
        .await
        .map_err(begin_failed)?;
    let mut rest = batch;
    for size in statement_sizes(batch.len()) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        insert(&mut txn, chunk).await?;
    }
    for (count, ids) in by_count(audience) {
        let set = "ws_audience_count = ws_audience_count + ?";
        update(&mut txn, set, Some(count), &ids).await?;
    }
    if !webhooks.is_empty() {
        let columns: [(&str, CountOf); 2] = [
            ("wh_audience_count = ?", |outcome| outcome.audience),
            ("wh_delivered_count = ?", |outcome| outcome.delivered),
        ];
        for (set, count_of) in columns {
            let counts: Vec<(Uuid, i32)> = webhooks
                .iter()
                .map(|outcome| (outcome.message_id, count_of(outcome)))
                .collect();
            for (count, ids) in by_count(&counts) {
                update(&mut txn, set, Some(count), &ids).await?;
            }
        }
        let ids: Vec<Uuid> = webhooks.iter().map(|outcome| outcome.message_id).collect();
        update(&mut txn, "wh_pending = NULL", None, &ids).await?;
    }
    txn.commit()
        .await
        .map_err(|err| PersistenceError::from_write(DbErr::Query(RuntimeErr::SqlxError(err))))
}

/// Which count of a webhook outcome a column's `SET` records.
type CountOf = fn(&WebhookOutcome) -> i32;

/// One INSERT of `rows` (a power-of-two count): the entity's columns in
/// its order, then the backlog mark (`wh_pending`, 1 when the row has
/// webhook URLs).
async fn insert(
    txn: &mut SqliteConnection,
    rows: &[&messages::Model],
) -> Result<(), PersistenceError> {
    let mut args = SqliteArguments::default();
    args.reserve(rows.len() * 13, 0);
    for row in rows {
        bind_row(&mut args, row).map_err(|err| {
            PersistenceError::Database(DbErr::Custom(format!("cannot bind a message: {err}")))
        })?;
    }
    sqlx::query_with(sqlite_insert_text(rows.len()), args)
        .execute(txn)
        .await
        .map_err(failed)?;
    Ok(())
}

fn bind_row<'q>(
    args: &mut SqliteArguments<'q>,
    row: &'q messages::Model,
) -> Result<(), sqlx::error::BoxDynError> {
    let blob = |id: &'q Uuid| id.as_bytes().as_slice();
    args.add(blob(&row.id))?;
    args.add(row.event_name.as_str())?;
    args.add(row.channel_id.as_ref().map(blob))?;
    args.add(row.channel_name.as_str())?;
    // SQLite keeps JSON as its text, which is what sqlx writes for a JSON
    // value; serialized here, once.
    args.add(row.payload.to_string())?;
    args.add(row.sender_type.as_str())?;
    args.add(row.sender_id.as_ref().map(blob))?;
    args.add(row.ws_audience_count)?;
    args.add(row.wh_audience_count)?;
    args.add(row.wh_delivered_count)?;
    args.add(row.created_at)?;
    args.add(row.seq)?;
    args.add((row.wh_audience_count > 0).then_some(1i32))?;
    Ok(())
}

/// `UPDATE messages SET <set> WHERE id IN (…)` over `ids`, in chunks;
/// `value`, if any, binds the `?` in `set` (bound, not written into the
/// text, so each chunk size is one prepared statement whatever the count).
async fn update(
    txn: &mut SqliteConnection,
    set: &str,
    value: Option<i32>,
    ids: &[Uuid],
) -> Result<(), PersistenceError> {
    for chunk in ids.chunks(MAX_IDS_PER_UPDATE) {
        let mut rest = chunk;
        for size in statement_sizes(chunk.len()) {
            let (ids, tail) = rest.split_at(size);
            rest = tail;
            let sql = format!(
                "UPDATE messages SET {set} WHERE id IN ({})",
                vec!["?"; size].join(", ")
            );
            let mut args = SqliteArguments::default();
            let mut bind = || {
                if let Some(value) = value {
                    args.add(value)?;
                }
                ids.iter()
                    .try_for_each(|id| args.add(id.as_bytes().as_slice()))
            };
            bind().map_err(|err| {
                PersistenceError::Database(DbErr::Custom(format!("cannot bind an update: {err}")))
            })?;
            sqlx::query_with::<Sqlite, _>(&sql, args)
                .execute(&mut *txn)
                .await
                .map_err(failed)?;
        }
    }
    Ok(())
}

/// A statement's failure, as sea-orm reports it, so the writer reads it
/// the same way.
fn failed(err: sqlx::Error) -> PersistenceError {
    PersistenceError::from_write(DbErr::Exec(RuntimeErr::SqlxError(err)))
}

/// No connection, or no transaction on it.
fn begin_failed(err: sqlx::Error) -> PersistenceError {
    PersistenceError::Database(match err {
        sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
        sqlx::Error::PoolClosed => DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
        other => DbErr::Conn(RuntimeErr::SqlxError(other)),
    })
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    use super::*;
    use crate::config::DatabaseSettings;
    use crate::persistence::{connect, messages as queries, migrate};

    fn message(n: u8, channel: Uuid) -> messages::Model {
        messages::Model {
            id: Uuid::now_v7(),
            event_name: format!("event-{n}"),
            channel_id: (n % 2 == 0).then_some(channel),
            channel_name: "order:1".into(),
            payload: serde_json::json!({ "n": n, "text": "it's \"quoted\" é" }),
            sender_type: "user".into(),
            sender_id: (n % 3 == 0).then(Uuid::new_v4),
            ws_audience_count: i32::from(n),
            wh_audience_count: i32::from(n % 2),
            wh_delivered_count: 0,
            created_at: crate::persistence::now(),
            seq: Some(i64::from(n) + 1),
        }
    }

    /// Every column of the row `id` as SQLite's `quote()` shows it: its
    /// type and its bytes.
    async fn raw_row(db: &DatabaseConnection, id: Uuid) -> Vec<String> {
        let columns = "quote(event_name), quote(channel_id), quote(channel_name), quote(payload),
            quote(sender_type), quote(sender_id), quote(ws_audience_count),
            quote(wh_audience_count), quote(wh_delivered_count), quote(created_at), quote(seq),
            quote(wh_pending)";
        let row = db
            .query_one(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                format!("SELECT {columns} FROM messages WHERE id = ?"),
                [id.into()],
            ))
            .await
            .unwrap()
            .expect("the row is stored");
        (0..12)
            .map(|i| row.try_get_by_index::<String>(i).unwrap())
            .collect()
    }

    /// The batch binds by hand what sea-orm would bind: a row it writes is
    /// stored byte for byte as the entity's insert stores it (ids as blobs,
    /// times as the same text), with its backlog mark; then its audience
    /// and webhook outcomes land in a later batch.
    #[actix_rt::test]
    async fn rows_are_stored_as_the_entity_stores_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = connect(&DatabaseSettings {
            url: format!("sqlite://{}", dir.path().join("batch.db").display()),
            pool_size: 2,
            acquire_timeout_ms: 1000,
            batch_size: 64,
            batch_window_ms: 1,
            publish_timeout_ms: 5000,
            sql_publish: false,
            sql_publish_poll_ms: 1000,
        })
        .await
        .unwrap();
        migrate(&db).await.unwrap();
        let channel = crate::persistence::channels::create(
            &db,
            crate::persistence::channels::NewChannel {
                pattern: "order:%".into(),
                description: None,
                webhook_urls: None,
                enabled: true,
            },
        )
        .await
        .unwrap()
        .id;
        // 13 rows: statements of 8, 4 and 1.
        let ours: Vec<messages::Model> = (0..13).map(|n| message(n, channel)).collect();
        let rows: Vec<&messages::Model> = ours.iter().collect();
        write(&db, &rows, &[], &[]).await.unwrap();
        let theirs: Vec<messages::Model> = ours
            .iter()
            .map(|row| messages::Model {
                id: Uuid::now_v7(),
                seq: row.seq.map(|seq| seq + 100),
                ..row.clone()
            })
            .collect();
        queries::insert_batch(&db, &theirs).await.unwrap();
        for (our, their) in ours.iter().zip(&theirs) {
            let mut expected = raw_row(&db, their.id).await;
            // The entity knows nothing of the backlog mark, nor of seq 100 on.
            expected[10] = our.seq.unwrap().to_string();
            expected[11] = if our.wh_audience_count > 0 {
                "1"
            } else {
                "NULL"
            }
            .into();
            assert_eq!(raw_row(&db, our.id).await, expected);
        }
        let stored = queries::by_ids(&db, &[ours[3].id]).await.unwrap();
        assert_eq!(stored, vec![ours[3].clone()], "reads back as written");

        let audience = [(ours[0].id, 2), (ours[1].id, 2), (ours[2].id, 5)];
        let webhooks = [WebhookOutcome {
            message_id: ours[1].id,
            audience: 3,
            delivered: 2,
        }];
        write(&db, &[], &audience, &webhooks).await.unwrap();
        let counts = |row: Vec<String>| {
            (
                row[6].clone(),
                row[7].clone(),
                row[8].clone(),
                row[11].clone(),
            )
        };
        assert_eq!(
            counts(raw_row(&db, ours[0].id).await),
            ("2".into(), "0".into(), "0".into(), "NULL".into())
        );
        assert_eq!(
            counts(raw_row(&db, ours[1].id).await),
            ("3".into(), "3".into(), "2".into(), "NULL".into())
        );
        assert_eq!(
            counts(raw_row(&db, ours[2].id).await),
            ("7".into(), "0".into(), "0".into(), "NULL".into())
        );
        assert_eq!(
            counts(raw_row(&db, ours[3].id).await).3,
            "1",
            "still in the backlog"
        );

        let again = write(&db, &[&ours[4]], &[], &[]).await;
        assert!(
            matches!(again, Err(PersistenceError::Duplicate)),
            "{again:?}"
        );
    }
}
