//! Where a quoted YAML scalar that runs into an error was opened.
//!
//! A quote left open swallows the lines after it, and the parser fails
//! only where the swallowed text stops making sense (often the next line's
//! indentation). The useful place to point at is the opening quote.

/// Whether the scanner is inside a quoted scalar, and where it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Plain,
    Double { line: usize, column: usize },
    Single { line: usize, column: usize },
}

/// The 1-based line and column of the quote still open at `line:column`
/// (the parser's error position), when it was opened on an earlier line.
pub(super) fn open_quote_before(source: &str, line: usize, column: usize) -> Option<(usize, usize)> {
    let mut state = State::Plain;
    let mut block_indent: Option<usize> = None;
    for (index, text) in source.lines().enumerate() {
        let number = index + 1;
        if number > line {
            break;
        }
        if let Some(indent) = block_indent {
            // Lines of a `|` or `>` block scalar are text, quotes included.
            if text.trim().is_empty() || indentation(text) > indent {
                continue;
            }
            block_indent = None;
        }
        let limit = if number == line { column.saturating_sub(1) } else { usize::MAX };
        state = scan_line(text, number, limit, state);
        if state == State::Plain && starts_block_scalar(text) {
            block_indent = Some(indentation(text));
        }
    }
    match state {
        State::Double { line: at, column } | State::Single { line: at, column } if at < line => Some((at, column)),
        _ => None,
    }
}

/// Runs the quote state over the first `limit` characters of one line.
fn scan_line(text: &str, number: usize, limit: usize, mut state: State) -> State {
    let chars: Vec<char> = text.chars().take(limit).collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let before = if i == 0 { ' ' } else { chars[i - 1] };
        match state {
            State::Plain if c == '#' && before.is_whitespace() => return state,
            State::Plain if c == '"' && opens_scalar(before) => state = State::Double { line: number, column: i + 1 },
            State::Plain if c == '\'' && opens_scalar(before) => state = State::Single { line: number, column: i + 1 },
            State::Double { .. } if c == '\\' => i += 1,
            State::Double { .. } if c == '"' => state = State::Plain,
            State::Single { .. } if c == '\'' && chars.get(i + 1) == Some(&'\'') => i += 1,
            State::Single { .. } if c == '\'' => state = State::Plain,
            _ => {}
        }
        i += 1;
    }
    state
}

/// A quote starts a quoted scalar only where a scalar can start; inside a
/// plain scalar (`don't`) it is an ordinary character.
fn opens_scalar(before: char) -> bool {
    before.is_whitespace() || matches!(before, ':' | '[' | '{' | ',' | '-' | '?')
}

/// `key: |`, `key: >-`, `- |2`: the lines after are a block scalar's text.
fn starts_block_scalar(text: &str) -> bool {
    let code = text.split(" #").next().unwrap_or(text).trim();
    let indicator = code.rsplit_once(": ").map(|(_, token)| token).or_else(|| code.strip_prefix("- ")).unwrap_or("");
    let mut chars = indicator.chars();
    matches!(chars.next(), Some('|' | '>')) && chars.all(|c| c == '-' || c == '+' || c.is_ascii_digit())
}

fn indentation(text: &str) -> usize {
    text.chars().take_while(|c| *c == ' ').count()
}

#[cfg(test)]
mod tests {
    use super::open_quote_before;

    #[test]
    fn finds_the_quote_left_open_on_an_earlier_line() {
        let source = "# head\ndescription: \"unterminated quote\nschedule: { cron: \"30 6 * * *\" }\n";
        assert_eq!(open_quote_before(source, 3, 1), Some((2, 14)));
        let single = "a: 'open\nb: 1\n";
        assert_eq!(open_quote_before(single, 2, 1), Some((1, 4)));
    }

    #[test]
    fn closed_quotes_apostrophes_comments_and_block_text_are_not_open_quotes() {
        let closed = "a: \"x \\\" y\"\nb: 'it''s'\nc: don't\nd: 1 # \"quoted in a comment\nerror here\n";
        assert_eq!(open_quote_before(closed, 5, 1), None);
        let block = "text: |\n  say \"hi\n  there\nnext: [\n";
        assert_eq!(open_quote_before(block, 4, 7), None);
        let same_line = "a: \"open at the error\n";
        assert_eq!(
            open_quote_before(same_line, 1, 10),
            None,
            "opened on the error's own line: the parser's place is right"
        );
    }
}
