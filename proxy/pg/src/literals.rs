//! Literals in recorded statements: finding the columns a statement names and rewriting its
//! constants, with PostgreSQL's own scanner (libpg_query), so the audit log does not become a
//! second copy of the values masking protects.
//!
//! Constants are string (`'…'`, `E'…'`, `$$…$$`, `U&'…'`), bit and hex strings, integers and
//! numerics. Everything else (keywords, identifiers, operators, parameters, comments) is kept
//! byte for byte, so the rewritten text still reads as the statement that ran.

use pg_query::protobuf::Token;

fn is_constant(token: i32) -> bool {
    [
        Token::Sconst,
        Token::Usconst,
        Token::Bconst,
        Token::Xconst,
        Token::Iconst,
        Token::Fconst,
    ]
    .iter()
    .any(|t| *t as i32 == token)
}

fn is_comment(token: i32) -> bool {
    token == Token::SqlComment as i32 || token == Token::CComment as i32
}

/// Whether `sql` names any of `columns` (lower case) as an identifier or keyword, quoted or
/// not. `None` when the text cannot be scanned (callers fail closed).
pub fn names_any(sql: &str, columns: &[String]) -> Option<bool> {
    // Cheap first: no name occurs anywhere in the text, in any case.
    let lower = sql.to_lowercase();
    if !columns.iter().any(|c| lower.contains(c.as_str())) {
        return Some(false);
    }
    let tokens = pg_query::scan_tokens(sql).ok()?;
    Some(tokens.iter().any(|t| {
        if is_constant(t.token) || is_comment(t.token) {
            return false;
        }
        let Some(text) = sql.get(t.start as usize..t.end as usize) else {
            return false;
        };
        let name = text.trim_matches('"').to_lowercase();
        columns.contains(&name)
    }))
}

/// `sql` with every constant replaced by `f(constant as written)`. `None` when the text cannot
/// be scanned.
pub fn rewrite_constants(sql: &str, mut f: impl FnMut(&str) -> String) -> Option<String> {
    let tokens = pg_query::scan_tokens(sql).ok()?;
    let mut out = String::with_capacity(sql.len());
    let mut at = 0usize;
    for t in tokens.iter().filter(|t| is_constant(t.token)) {
        let (start, end) = (t.start as usize, t.end as usize);
        let (Some(before), Some(constant)) = (sql.get(at..start), sql.get(start..end)) else {
            return None;
        };
        out.push_str(before);
        out.push_str(&f(constant));
        at = end;
    }
    out.push_str(sql.get(at..)?);
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly
mod tests {
    use super::*;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn finds_named_columns_but_not_values_or_comments() {
        let c = cols(&["ssn", "password"]);
        assert_eq!(
            names_any("SELECT name FROM customers WHERE ssn = '1'", &c),
            Some(true)
        );
        assert_eq!(names_any("SELECT \"SSN\" FROM t", &c), Some(true));
        assert_eq!(
            names_any("INSERT INTO t (id, ssn) VALUES (1, '078-05-1120')", &c),
            Some(true)
        );
        // A keyword used as a column name.
        assert_eq!(
            names_any("UPDATE users SET password = 'x' WHERE id = 1", &c),
            Some(true)
        );
        assert_eq!(names_any("SELECT 'ssn' AS label", &c), Some(false));
        assert_eq!(names_any("SELECT 1 -- ssn\n", &c), Some(false));
        assert_eq!(names_any("SELECT ssnx FROM t", &c), Some(false));
        assert_eq!(names_any("SELECT 1", &c), Some(false));
    }

    #[test]
    fn rewrites_every_kind_of_constant_and_nothing_else() {
        let q = "SELECT $1, 'a''b', E'\\x41', $$dollar$$, 42, 3.5e2, B'101', X'FF' FROM t -- 'c'";
        let out = rewrite_constants(q, |_| "?".to_string()).unwrap();
        assert_eq!(out, "SELECT $1, ?, ?, ?, ?, ?, ?, ? FROM t -- 'c'");
        let seen = std::cell::RefCell::new(Vec::new());
        rewrite_constants("UPDATE t SET ssn = '078-05-1120' WHERE id = 7", |c| {
            seen.borrow_mut().push(c.to_string());
            String::new()
        });
        assert_eq!(*seen.borrow(), ["'078-05-1120'", "7"]);
        // Unterminated quote: the scanner refuses, so callers can fail closed.
        assert_eq!(rewrite_constants("SELECT 'oops", |_| String::new()), None);
    }
}
