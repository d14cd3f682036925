//! "Did you mean …?" from edit distance.

/// The candidate closest to `input`, if it is close enough to be a typo:
/// within a third of the input's length (at least 1, at most 3 edits).
pub fn closest<'a, I>(input: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let budget = (input.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|candidate| (strsim::damerau_levenshtein(input, candidate), candidate))
        .filter(|(distance, _)| *distance <= budget)
        .min_by_key(|(distance, candidate)| (*distance, *candidate))
        .map(|(_, candidate)| candidate)
}

/// `did you mean `x`?` for the closest candidate, if any.
pub fn did_you_mean<'a, I>(input: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    closest(input, candidates).map(|found| format!("did you mean `{found}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_typos_and_ignores_strangers() {
        let models = ["claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-6"];
        assert_eq!(closest("claude-sonet-4-6", models), Some("claude-sonnet-4-6"));
        assert_eq!(closest("claude-haiku-4.5", models), Some("claude-haiku-4-5"));
        assert_eq!(closest("gpt-4o", models), None);
        assert_eq!(closest("shedule", ["schedule", "sink"]), Some("schedule"));
    }
}
