//! PostgreSQL: each node's presence members per channel (`presence`), and
//! the notifications that tell the other nodes of changes
//! ([`migration::PRESENCE_CHANNEL`]). ARCHITECTURE.md, "Several nodes".

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{envelope, PersistenceError};

/// A member of one node appearing in a channel (`member` set) or leaving it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PresenceChange {
    /// The resolved channel name.
    #[serde(rename = "c")]
    pub channel: String,
    /// The member's presence id.
    #[serde(rename = "p")]
    pub presence_id: String,
    /// The member as subscribers see it; `None` when it left.
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub member: Option<Value>,
}

/// What one notification carries: changes of one node's members.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct PresenceEnvelope {
    /// The node whose members changed.
    pub node: String,
    /// The changes, in order.
    pub changes: Vec<PresenceChange>,
}

/// `changes` of `node` cut into envelopes small enough to notify, each
/// change serialized once. A change too big to notify on its own (a
/// presence id of kilobytes) is left out, and logged: the other nodes see
/// it when they next load the channel.
pub fn envelopes(node: &str, changes: &[PresenceChange]) -> Vec<String> {
    // unwrap: strings and JSON values always serialize.
    let head = format!(
        "{{\"node\":{},\"changes\":[",
        serde_json::to_string(node).unwrap()
    );
    let room = envelope::room(&head);
    let items = changes.iter().filter_map(|change| {
        let item = serde_json::to_string(change).unwrap();
        if item.len() > room {
            tracing::warn!(channel = %change.channel, "a presence change is too big to notify to the other nodes");
            return None;
        }
        Some(item)
    });
    envelope::pack(&head, items)
}

/// Writes `node`'s member changes (each channel and presence id at most
/// once) and notifies them, in one statement.
///
/// # Errors
/// Database failures; then nothing changed.
pub async fn write(
    db: &DatabaseConnection,
    node: &str,
    changes: &[PresenceChange],
) -> Result<(), PersistenceError> {
    let notifications = envelopes(node, changes);
    let sql = format!(
        "WITH changes AS (SELECT * FROM jsonb_to_recordset($2::jsonb) AS t(c text, p text, m jsonb)),
         joined AS (
           INSERT INTO presence (node, channel_name, presence_id, member)
           SELECT $1, c, p, m FROM changes WHERE m IS NOT NULL
           ON CONFLICT (channel_name, presence_id, node) DO UPDATE SET member = excluded.member),
         departed AS (
           DELETE FROM presence x USING changes
            WHERE x.node = $1 AND x.channel_name = changes.c AND x.presence_id = changes.p
              AND changes.m IS NULL)
         SELECT pg_notify('{channel}', e) FROM jsonb_array_elements_text($3::jsonb) AS e",
        channel = migration::PRESENCE_CHANNEL
    );
    db.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        [
            node.into(),
            // unwrap: strings and JSON values always serialize.
            serde_json::to_string(changes).unwrap().into(),
            serde_json::to_string(&notifications).unwrap().into(),
        ],
    ))
    .await?;
    Ok(())
}

/// The members other nodes than `node` have in `channel`: presence id →
/// node → member.
///
/// # Errors
/// Database failures.
pub async fn elsewhere(
    db: &DatabaseConnection,
    channel: &str,
    node: &str,
) -> Result<HashMap<String, HashMap<String, Value>>, PersistenceError> {
    let rows = db
        .query_all(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT presence_id, node, member FROM presence WHERE channel_name = $1 AND node <> $2",
            [channel.into(), node.into()],
        ))
        .await?;
    let mut members: HashMap<String, HashMap<String, Value>> = HashMap::new();
    for row in rows {
        members
            .entry(row.try_get("", "presence_id")?)
            .or_default()
            .insert(row.try_get("", "node")?, row.try_get("", "member")?);
    }
    Ok(members)
}

/// Deletes the members of nodes that are no longer in `nodes` (dead ones,
/// once expired) and notifies their leaves, as if from those nodes, in one
/// transaction. Returns how many members left.
///
/// # Errors
/// Database failures; then nothing changed.
pub async fn remove_orphans(db: &DatabaseConnection) -> Result<usize, PersistenceError> {
    let txn = db.begin().await?;
    let rows = txn
        .query_all(Statement::from_string(
            DbBackend::Postgres,
            "DELETE FROM presence p WHERE NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = p.node)
             RETURNING node, channel_name, presence_id",
        ))
        .await?;
    let mut by_node: HashMap<String, Vec<PresenceChange>> = HashMap::new();
    for row in &rows {
        by_node
            .entry(row.try_get("", "node")?)
            .or_default()
            .push(PresenceChange {
                channel: row.try_get("", "channel_name")?,
                presence_id: row.try_get("", "presence_id")?,
                member: None,
            });
    }
    let notifications: Vec<String> = by_node
        .iter()
        .flat_map(|(node, changes)| envelopes(node, changes))
        .collect();
    if !notifications.is_empty() {
        txn.execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "SELECT pg_notify('{}', e) FROM jsonb_array_elements_text($1::jsonb) AS e",
                migration::PRESENCE_CHANNEL
            ),
            // unwrap: strings always serialize.
            [serde_json::to_string(&notifications).unwrap().into()],
        ))
        .await?;
    }
    txn.commit().await?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_stay_under_the_notify_limit_and_keep_every_change_in_order() {
        let changes: Vec<PresenceChange> = (0..500)
            .map(|i| PresenceChange {
                channel: format!("room:{i}"),
                presence_id: format!("user-{i}"),
                member: (i % 2 == 0)
                    .then(|| serde_json::json!({ "presenceId": format!("user-{i}") })),
            })
            .collect();
        let out = envelopes("node-1", &changes);
        assert!(out.len() > 1);
        let mut back = Vec::new();
        for text in &out {
            assert!(text.len() < 8000, "{}", text.len());
            let envelope: PresenceEnvelope = serde_json::from_str(text).unwrap();
            assert_eq!(envelope.node, "node-1");
            back.extend(envelope.changes);
        }
        assert_eq!(back, changes);
    }

    #[test]
    fn a_change_too_big_to_notify_is_left_out() {
        let changes = [
            PresenceChange {
                channel: "a".into(),
                presence_id: "x".repeat(9000),
                member: None,
            },
            PresenceChange {
                channel: "a".into(),
                presence_id: "y".into(),
                member: None,
            },
        ];
        let out = envelopes("n", &changes);
        assert_eq!(out.len(), 1);
        let envelope: PresenceEnvelope = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(envelope.changes, [changes[1].clone()]);
    }
}
