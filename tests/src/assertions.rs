//! What the tests look at in Redis after a run: dead letters, pending entries.

use anyhow::Result;

/// Every entry of the dead-letter stream `sluice:dlq`, oldest first, as field maps.
pub fn dead_letters(conn: &mut impl redis::ConnectionLike) -> Vec<std::collections::HashMap<String, String>> {
    let v: redis::Value =
        redis::cmd("XRANGE").arg("sluice:dlq").arg("-").arg("+").query(conn).unwrap_or(redis::Value::Nil);
    let entries: Vec<(String, Vec<(String, String)>)> = redis::from_redis_value(v).unwrap_or_default();
    entries.into_iter().map(|(_, f)| f.into_iter().collect()).collect()
}

/// Total pending entries of every consumer group on `streams`.
pub fn total_pending(conn: &mut impl redis::ConnectionLike, streams: &[&str]) -> Result<i64> {
    let mut total = 0;
    for s in streams {
        let groups: Vec<redis::Value> = redis::cmd("XINFO").arg("GROUPS").arg(s).query(conn).unwrap_or_default();
        for g in groups {
            let fields: Vec<redis::Value> = redis::from_redis_value(g)?;
            let mut it = fields.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if redis::from_redis_value::<String>(k)? == "pending" {
                    total += redis::from_redis_value::<i64>(v)?;
                }
            }
        }
    }
    Ok(total)
}
