//! PostgreSQL: ephemeral messages between nodes. They are never stored;
//! they travel in notifications ([`migration::EPHEMERAL_CHANNEL`]), several
//! to an envelope. A packet too big for a notification waits in
//! `ephemeral_relay` for the seconds the nodes take to read it, and its
//! envelope names the row. ARCHITECTURE.md, "Several nodes".

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{envelope, PersistenceError};

/// One ephemeral message on its way: its channel and its Socket.IO packet,
/// in the envelope or in a row.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct RelayedMessage {
    /// The resolved channel name.
    #[serde(rename = "c")]
    pub channel: String,
    /// The packet as subscribers get it (`42["event",{…}]`), when it fits.
    #[serde(rename = "p", default)]
    pub packet: Option<String>,
    /// Else the `ephemeral_relay` row that holds it.
    #[serde(rename = "r", default)]
    pub row: Option<Uuid>,
}

/// What one notification carries: messages published on one node, in order.
#[derive(Debug, PartialEq, Deserialize)]
pub struct EphemeralEnvelope {
    /// The node they were published on.
    pub node: String,
    /// The messages.
    pub messages: Vec<RelayedMessage>,
}

/// How a message is written into an envelope: [`RelayedMessage`],
/// borrowed, so each message is serialized once.
#[derive(Serialize)]
struct Outgoing<'a> {
    #[serde(rename = "c")]
    channel: &'a str,
    #[serde(rename = "p", skip_serializing_if = "Option::is_none")]
    packet: Option<&'a str>,
    #[serde(rename = "r", skip_serializing_if = "Option::is_none")]
    row: Option<Uuid>,
}

/// `messages` (channel, packet) of `node` as notification payloads, in
/// order, and the rows to write first for the packets too big to carry
/// (measured escaped, as they travel: a packet of quotes grows by half).
fn envelopes(node: &str, messages: &[(&str, &str)]) -> (Vec<String>, Vec<(Uuid, String)>) {
    // unwrap: strings and uuids always serialize.
    let head = format!(
        "{{\"node\":{},\"messages\":[",
        serde_json::to_string(node).unwrap()
    );
    // A reference to a row always fits: channel names are at most
    // `pattern::MAX_LEN` bytes.
    let room = envelope::room(&head);
    let mut rows = Vec::new();
    let items: Vec<String> = messages
        .iter()
        .map(|&(channel, packet)| {
            let inline = Outgoing {
                channel,
                packet: Some(packet),
                row: None,
            };
            let item = serde_json::to_string(&inline).unwrap();
            if item.len() <= room {
                return item;
            }
            let id = Uuid::now_v7();
            rows.push((id, packet.to_owned()));
            let by_row = Outgoing {
                channel,
                packet: None,
                row: Some(id),
            };
            serde_json::to_string(&by_row).unwrap()
        })
        .collect();
    (envelope::pack(&head, items), rows)
}

/// Sends `messages` (channel, packet) of `node` to every node, this one
/// included, in one statement: the other nodes hear them in this order,
/// after what this node relayed before.
///
/// # Errors
/// Database failures; then nothing was sent.
pub async fn relay(
    db: &DatabaseConnection,
    node: &str,
    messages: &[(&str, &str)],
) -> Result<(), PersistenceError> {
    let (notifications, rows) = envelopes(node, messages);
    let rows: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|(id, packet)| serde_json::json!({ "id": id, "packet": packet }))
        .collect();
    let sql = format!(
        "WITH big AS (
           INSERT INTO ephemeral_relay (id, packet)
           SELECT id, packet FROM jsonb_to_recordset($1::jsonb) AS t(id uuid, packet text))
         SELECT pg_notify('{channel}', e) FROM jsonb_array_elements_text($2::jsonb)
           WITH ORDINALITY AS t(e, i) ORDER BY i",
        channel = migration::EPHEMERAL_CHANNEL
    );
    db.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        [
            // unwrap: JSON values always serialize.
            serde_json::to_string(&rows).unwrap().into(),
            serde_json::to_string(&notifications).unwrap().into(),
        ],
    ))
    .await?;
    Ok(())
}

/// The packets of the relayed rows `ids` still there, by id.
///
/// # Errors
/// Database failures.
pub async fn relayed_packets(
    db: &DatabaseConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, String>, PersistenceError> {
    let rows = db
        .query_all(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id, packet FROM ephemeral_relay WHERE id = ANY($1)",
            [ids.to_vec().into()],
        ))
        .await?;
    let mut packets = HashMap::with_capacity(rows.len());
    for row in rows {
        packets.insert(row.try_get("", "id")?, row.try_get("", "packet")?);
    }
    Ok(packets)
}

/// How long a relayed row is kept for the nodes to read.
pub const RELAYED_ROW_LIFETIME_SECS: i64 = 60;

/// Deletes relayed rows every node has had time to read. Returns how many.
///
/// # Errors
/// Database failures.
pub async fn forget_relayed(db: &DatabaseConnection) -> Result<u64, PersistenceError> {
    let done = db
        .execute(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "DELETE FROM ephemeral_relay WHERE created_at < now() - interval '{RELAYED_ROW_LIFETIME_SECS} seconds'"
            ),
        ))
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_stay_under_the_notify_limit_and_keep_every_message_in_order() {
        let packets: Vec<String> = (0..300)
            .map(|i| {
                format!(
                    "42[\"cursor\",{{\"x\":{i},\"pad\":\"{}\"}}]",
                    "a".repeat(i * 3)
                )
            })
            .collect();
        let messages: Vec<(&str, &str)> = packets
            .iter()
            .enumerate()
            .map(|(i, p)| (if i % 2 == 0 { "room:a" } else { "room:b" }, p.as_str()))
            .collect();
        let (out, rows) = envelopes("node-1", &messages);
        assert!(rows.is_empty(), "every packet is under the inline limit");
        assert!(out.len() > 1);
        let mut back = Vec::new();
        for text in &out {
            assert!(text.len() < 8000, "{}", text.len());
            let envelope: EphemeralEnvelope = serde_json::from_str(text).unwrap();
            assert_eq!(envelope.node, "node-1");
            back.extend(
                envelope
                    .messages
                    .into_iter()
                    .map(|m| (m.channel, m.packet.unwrap())),
            );
        }
        let expected: Vec<(String, String)> = messages
            .iter()
            .map(|(c, p)| ((*c).to_owned(), (*p).to_owned()))
            .collect();
        assert_eq!(back, expected);
    }

    #[test]
    fn a_packet_that_grows_past_the_limit_when_escaped_goes_through_a_row() {
        // Under 6,000 bytes of quotes and commas: about 9,500 escaped.
        let quotes = format!("42[\"q\",{{\"s\":[{}\"\"]}}]", "\"\",".repeat(1900));
        assert!(quotes.len() < 6000);
        let (out, rows) = envelopes("n", &[("room:a", quotes.as_str())]);
        assert_eq!(rows.len(), 1);
        assert!(out[0].len() < 8000, "{}", out[0].len());
        let envelope: EphemeralEnvelope = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(envelope.messages[0].row, Some(rows[0].0));
    }

    #[test]
    fn a_packet_too_big_to_notify_goes_through_a_row_named_in_order() {
        let big = format!("42[\"doc\",{{\"text\":\"{}\"}}]", "x".repeat(50_000));
        let messages = [
            ("room:a", "42[\"a\",{}]"),
            ("room:a", big.as_str()),
            ("room:a", "42[\"c\",{}]"),
        ];
        let (out, rows) = envelopes("n", &messages);
        assert_eq!(out.len(), 1);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1, big);
        let envelope: EphemeralEnvelope = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(envelope.messages[0].packet.as_deref(), Some("42[\"a\",{}]"));
        assert_eq!(envelope.messages[1].row, Some(rows[0].0));
        assert_eq!(envelope.messages[1].packet, None);
        assert_eq!(envelope.messages[2].packet.as_deref(), Some("42[\"c\",{}]"));
    }
}
