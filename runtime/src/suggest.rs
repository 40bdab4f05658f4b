//! "Did you mean …?" for names people type: config keys, sections, settings.

/// For a serde error "unknown field `x`, expected one of `a`, `b`, …" (what `deny_unknown_fields`
/// says), a shorter message naming the nearest known field, if one is near enough.
pub fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    match nearest(unknown, &expected) {
        Some(near) => Some(format!("unknown key `{unknown}` — did you mean `{near}`?")),
        None => Some(format!("unknown key `{unknown}`; the known keys are: {}", expected.join(", "))),
    }
}

/// A TOML file that could not be read into settings: where (line and column), and what,
/// with the nearest known key for an unknown one.
pub fn toml_error(what: &str, e: &toml::de::Error) -> anyhow::Error {
    let at = match (e.span(), e.message()) {
        (Some(_), _) => {
            // "TOML parse error at line 2, column 1": the first line of the full message.
            e.to_string().lines().next().map(|l| l.replace("TOML parse error ", "")).unwrap_or_default()
        }
        _ => String::new(),
    };
    let what_wrong = unknown_field_hint(e.message()).unwrap_or_else(|| e.message().trim().to_string());
    anyhow::anyhow!("invalid {what}{}: {what_wrong}", if at.is_empty() { String::new() } else { format!(" ({at})") })
}

/// The candidate closest to `word` by edit distance (case and `-`/`_` ignored), if it is
/// within a third of the word's length (at least 2 edits).
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let w = norm(word);
    let limit = (w.chars().count() / 3).max(2);
    candidates
        .iter()
        .map(|c| (distance(&w, &norm(c)), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_key() {
        let m = "unknown field `bach_size`, expected one of `redis_url`, `batch_size`, `block_ms`";
        assert_eq!(unknown_field_hint(m).unwrap(), "unknown key `bach_size` — did you mean `batch_size`?");
        let m = "unknown field `zzz`, expected `name` or `version`";
        assert_eq!(unknown_field_hint(m).unwrap(), "unknown key `zzz`; the known keys are: name, version");
        assert_eq!(nearest("clickhouse-url", &["clickhouse_url", "redis_url"]), Some("clickhouse_url"));
        assert_eq!(
            nearest("retention_max_lenght", &["retention_max_len", "retention_max_age"]),
            Some("retention_max_len")
        );
        assert!(unknown_field_hint("missing field `x`").is_none());
    }
}
