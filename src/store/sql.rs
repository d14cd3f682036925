//! One connection API over both state engines, SQLite and PostgreSQL, in
//! the shape of rusqlite's (which the store was written against first), so
//! the store's queries are written once.
//!
//! The SQL is written in the subset both engines read. What differs is
//! handled here, once: `?N` placeholders become `$N`, SQLite's `INDEXED BY`
//! hints are dropped, and values bind and read by what the statement needs
//! (PostgreSQL is strictly typed, SQLite is not). A few fragments that have
//! no common spelling (JSON, the day of an instant) come from [`Dialect`].
//!
//! On PostgreSQL every transaction first takes one advisory lock, so that
//! writers take turns as they do on SQLite (`BEGIN IMMEDIATE`) and the
//! store's read-then-write steps keep their meaning; then, once this
//! process leads the database ([`set_fence`]), it checks that the
//! leadership row still holds its epoch. A takeover changes the row under
//! the same lock, so a process that lost the lead cannot commit anything
//! after it: its next transaction fails with [`Error::Fenced`]. A write
//! outside a transaction runs in one of its own, fenced the same way.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::sync::{Mutex, PoisonError};

use bytes::BufMut;
use postgres::types::{IsNull, Kind, Type};

/// The key of the advisory lock every PostgreSQL transaction of the store
/// takes (any constant: it only has to be the same in every process).
const WRITER_LOCK: i64 = 0x6f72_6368_6573;

/// The epoch this process leads each PostgreSQL database with, by URL.
static FENCES: Mutex<BTreeMap<String, i64>> = Mutex::new(BTreeMap::new());

/// From now on every transaction of this process on the database at `url`
/// commits only while its leadership row holds `epoch` (`None`: no longer).
pub fn set_fence(url: &str, epoch: Option<i64>) {
    let mut fences = FENCES.lock().unwrap_or_else(PoisonError::into_inner);
    match epoch {
        Some(epoch) => fences.insert(url.to_owned(), epoch),
        None => fences.remove(url),
    };
}

fn fence_of(url: &str) -> Option<i64> {
    FENCES.lock().unwrap_or_else(PoisonError::into_inner).get(url).copied()
}

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL (or the connection to it) failed.
    #[error("{}", postgres_text(.0))]
    Postgres(#[from] postgres::Error),
    /// A query for one row found none.
    #[error("query returned no rows")]
    QueryReturnedNoRows,
    /// A value did not fit where it was read or bound.
    #[error("column or parameter {index}: {message}")]
    Conversion {
        /// The column or parameter (0-based).
        index: usize,
        /// What did not fit.
        message: String,
    },
    /// The leadership row holds another epoch than this connection leads with.
    #[error("the leadership row holds epoch {found}, not {ours}: another process leads")]
    Fenced {
        /// The epoch this connection led with.
        ours: i64,
        /// The epoch the row holds.
        found: i64,
    },
    /// A new session could not be opened (after the server ended the last one).
    #[error("cannot connect again: {0}")]
    Reconnect(String),
}

/// `postgres::Error` shows only "db error": the server's words (and its
/// hint), or the connection's error with its causes.
pub(crate) fn postgres_text(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let hint = db.hint().map_or(String::new(), |hint| format!(" ({hint})"));
            format!("{} {}: {}{hint}", db.severity(), db.code().code(), db.message())
        }
        None => {
            let mut text = error.to_string();
            let mut cause = std::error::Error::source(error);
            while let Some(inner) = cause {
                text.push_str(&format!(": {inner}"));
                cause = inner.source();
            }
            text
        }
    }
}

/// A statement's outcome.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `.optional()` on a one-row query: no row is `None`, not an error.
pub trait OptionalExtension<T> {
    /// The row, `None` when there was none.
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(Error::QueryReturnedNoRows) | Err(Error::Sqlite(rusqlite::Error::QueryReturnedNoRows)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Which engine a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Dialect {
    /// The text at `key` (a top-level field) of the JSON object in `expr`.
    pub fn json_text(self, expr: &str, key: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_extract({expr}, '$.{key}')"),
            Dialect::Postgres => format!("(({expr})::jsonb ->> '{key}')"),
        }
    }

    /// A table of the elements of the JSON array of strings in `expr`, as
    /// rows with one column `value`, named `alias`.
    pub fn json_values(self, expr: &str, alias: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_each({expr}) {alias}"),
            Dialect::Postgres => format!("jsonb_array_elements_text(({expr})::jsonb) AS {alias} (value)"),
        }
    }

    /// The UTC day (`YYYY-MM-DD`) of the millisecond instant in `expr`.
    pub fn utc_day(self, expr: &str) -> String {
        match self {
            Dialect::Sqlite => format!("date({expr} / 1000, 'unixepoch')"),
            Dialect::Postgres => {
                format!("to_char(to_timestamp(({expr}) / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')")
            }
        }
    }
}

/// A borrowed value, as both engines bind and return them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// SQL NULL.
    Null,
    /// A 64-bit integer (booleans are integers).
    Integer(i64),
    /// A double.
    Real(f64),
    /// UTF-8 text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
}

/// An owned value read from PostgreSQL.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(t) => ValueRef::Text(t),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }
}

/// A value a statement can bind.
pub trait ToSql {
    /// The value to bind.
    fn to_value(&self) -> Result<ValueRef<'_>, String>;
}

macro_rules! to_sql_integer {
    ($($t:ty),*) => {$(
        impl ToSql for $t {
            fn to_value(&self) -> Result<ValueRef<'_>, String> {
                i64::try_from(*self).map(ValueRef::Integer).map_err(|_| format!("{self} does not fit in 64 bits"))
            }
        }
    )*};
}
to_sql_integer!(i64, i32, u32, u64, usize, u8, i8, u16, i16);

impl ToSql for bool {
    fn to_value(&self) -> Result<ValueRef<'_>, String> {
        Ok(ValueRef::Integer(i64::from(*self)))
    }
}

impl ToSql for f64 {
    fn to_value(&self) -> Result<ValueRef<'_>, String> {
        Ok(ValueRef::Real(*self))
    }
}

impl ToSql for str {
    fn to_value(&self) -> Result<ValueRef<'_>, String> {
        Ok(ValueRef::Text(self))
    }
}

impl ToSql for String {
    fn to_value(&self) -> Result<ValueRef<'_>, String> {
        Ok(ValueRef::Text(self))
    }
}

impl ToSql for [u8] {
    fn to_value(&self) -> Result<ValueRef<'_>, String> {
        Ok(ValueRef::Blob(self))
    }
}

impl ToSql for Vec<u8> {
    fn to_value(&self) -> Result<ValueRef<'_>, String> {
        Ok(ValueRef::Blob(self))
    }
}

impl<T: ToSql + ?Sized> ToSql for &T {
    fn to_value(&self) -> Result<ValueRef<'_>, String> {
        (**self).to_value()
    }
}

impl<T: ToSql> ToSql for Option<T> {
    fn to_value(&self) -> Result<ValueRef<'_>, String> {
        match self {
            Some(value) => value.to_value(),
            None => Ok(ValueRef::Null),
        }
    }
}

impl ToSql for std::borrow::Cow<'_, str> {
    fn to_value(&self) -> Result<ValueRef<'_>, String> {
        Ok(ValueRef::Text(self))
    }
}

/// A statement's parameters, in order.
pub trait Params {
    /// How many.
    fn count(&self) -> usize;
    /// The one at `index`.
    fn at(&self, index: usize) -> &dyn ToSql;
}

impl Params for &[&dyn ToSql] {
    fn count(&self) -> usize {
        self.len()
    }
    fn at(&self, index: usize) -> &dyn ToSql {
        self[index]
    }
}

impl Params for [&dyn ToSql; 0] {
    fn count(&self) -> usize {
        0
    }
    fn at(&self, _: usize) -> &dyn ToSql {
        unreachable!("no parameters")
    }
}

macro_rules! params_array {
    ($($n:literal),*) => {$(
        impl<T: ToSql> Params for [T; $n] {
            fn count(&self) -> usize {
                $n
            }
            fn at(&self, index: usize) -> &dyn ToSql {
                &self[index]
            }
        }
    )*};
}
params_array!(1, 2, 3, 4, 5, 6, 7, 8);

/// Parameters of mixed types, as `rusqlite::params!` takes them.
macro_rules! params {
    () => { &[] as &[&dyn $crate::store::sql::ToSql] };
    ($($param:expr),+ $(,)?) => { &[$(&$param as &dyn $crate::store::sql::ToSql),+] as &[&dyn $crate::store::sql::ToSql] };
}
pub(crate) use params;

/// A value a column can be read as.
pub trait FromSql: Sized {
    /// The value, or why it is not one of these.
    fn column_result(value: ValueRef<'_>) -> Result<Self, String>;
}

fn wrong(value: ValueRef<'_>, wanted: &str) -> String {
    format!("{value:?} is not {wanted}")
}

macro_rules! from_sql_integer {
    ($($t:ty),*) => {$(
        impl FromSql for $t {
            fn column_result(value: ValueRef<'_>) -> Result<Self, String> {
                match value {
                    ValueRef::Integer(i) => <$t>::try_from(i).map_err(|_| format!("{i} is out of range")),
                    other => Err(wrong(other, "an integer")),
                }
            }
        }
    )*};
}
from_sql_integer!(i64, i32, u32, u64, usize, u8, u16, i16);

impl FromSql for bool {
    fn column_result(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Integer(i) => Ok(i != 0),
            other => Err(wrong(other, "a boolean")),
        }
    }
}

impl FromSql for f64 {
    fn column_result(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Real(f) => Ok(f),
            ValueRef::Integer(i) => Ok(i as f64),
            other => Err(wrong(other, "a number")),
        }
    }
}

impl FromSql for String {
    fn column_result(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Text(t) => Ok(t.to_owned()),
            other => Err(wrong(other, "text")),
        }
    }
}

impl FromSql for Vec<u8> {
    fn column_result(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Blob(b) => Ok(b.to_vec()),
            ValueRef::Text(t) => Ok(t.as_bytes().to_vec()),
            other => Err(wrong(other, "bytes")),
        }
    }
}

impl<T: FromSql> FromSql for Option<T> {
    fn column_result(value: ValueRef<'_>) -> Result<Self, String> {
        match value {
            ValueRef::Null => Ok(None),
            other => T::column_result(other).map(Some),
        }
    }
}

/// A column's position in a row (0-based), as `row.get::<_, T>(i)` takes it.
pub trait ColumnIndex {
    /// The position.
    fn index(&self) -> usize;
}

impl ColumnIndex for usize {
    fn index(&self) -> usize {
        *self
    }
}

/// One row of a query's answer.
pub enum Row<'r> {
    /// A SQLite row.
    Sqlite(&'r rusqlite::Row<'r>),
    /// A PostgreSQL row.
    Postgres(&'r postgres::Row),
}

impl Row<'_> {
    /// The column at `index` as a `T`.
    pub fn get<I: ColumnIndex, T: FromSql>(&self, index: I) -> Result<T> {
        let index = index.index();
        let converted = match self {
            Row::Sqlite(row) => T::column_result(from_sqlite(row.get_ref(index)?)),
            Row::Postgres(row) => {
                let value: AnyValue = row.try_get(index)?;
                T::column_result(value.0.as_ref())
            }
        };
        converted.map_err(|message| Error::Conversion { index, message })
    }
}

impl<'r> Row<'r> {
    /// The text column at `index`, borrowed from the row.
    pub fn get_str(&self, index: usize) -> Result<&'r str> {
        let wrong = |message: String| Error::Conversion { index, message };
        match *self {
            Row::Sqlite(row) => match from_sqlite(row.get_ref(index)?) {
                ValueRef::Text(text) => Ok(text),
                other => Err(wrong(format!("{other:?} is not text"))),
            },
            Row::Postgres(row) => Ok(row.try_get(index)?),
        }
    }
}

fn from_sqlite(value: rusqlite::types::ValueRef<'_>) -> ValueRef<'_> {
    use rusqlite::types::ValueRef as V;
    match value {
        V::Null => ValueRef::Null,
        V::Integer(i) => ValueRef::Integer(i),
        V::Real(f) => ValueRef::Real(f),
        // SQLite text is UTF-8 unless someone wrote bytes into it; show those as bytes.
        V::Text(t) => std::str::from_utf8(t).map_or(ValueRef::Blob(t), ValueRef::Text),
        V::Blob(b) => ValueRef::Blob(b),
    }
}

/// A parameter bound on SQLite.
struct SqliteBind<'a>(&'a dyn ToSql);

impl rusqlite::ToSql for SqliteBind<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef as V};
        let value = self.0.to_value().map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
        Ok(ToSqlOutput::Borrowed(match value {
            ValueRef::Null => V::Null,
            ValueRef::Integer(i) => V::Integer(i),
            ValueRef::Real(f) => V::Real(f),
            ValueRef::Text(t) => V::Text(t.as_bytes()),
            ValueRef::Blob(b) => V::Blob(b),
        }))
    }
}

fn sqlite_params<P: Params>(params: &P) -> impl rusqlite::Params + '_ {
    rusqlite::params_from_iter((0..params.count()).map(|i| SqliteBind(params.at(i))))
}

/// A parameter bound on PostgreSQL: encoded as whatever type the server
/// inferred for its placeholder, as SQLite would take it.
#[derive(Debug)]
struct PostgresBind<'a>(ValueRef<'a>);

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl postgres::types::ToSql for PostgresBind<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        let integer = |wanted: &str| -> Result<i64, BoxError> {
            match self.0 {
                ValueRef::Integer(i) => Ok(i),
                other => Err(format!("{other:?} bound where the statement needs {wanted}").into()),
            }
        };
        match (self.0, ty) {
            (ValueRef::Null, _) => return Ok(IsNull::Yes),
            (_, &Type::INT8) => out.put_i64(integer("a bigint")?),
            (_, &Type::INT4) => out.put_i32(i32::try_from(integer("an integer")?)?),
            (_, &Type::INT2) => out.put_i16(i16::try_from(integer("a smallint")?)?),
            (_, &Type::BOOL) => out.put_u8(u8::from(integer("a boolean")? != 0)),
            (ValueRef::Real(f), &Type::FLOAT8) => out.put_f64(f),
            (ValueRef::Integer(i), &Type::FLOAT8) => out.put_f64(i as f64),
            (ValueRef::Real(f), &Type::FLOAT4) => out.put_f32(f as f32),
            (ValueRef::Text(t), &Type::JSONB) => {
                out.put_u8(1);
                out.put_slice(t.as_bytes());
            }
            (ValueRef::Text(t), _) if is_text(ty) => out.put_slice(t.as_bytes()),
            (ValueRef::Blob(b), &Type::BYTEA) => out.put_slice(b),
            (value, ty) => return Err(format!("{value:?} bound where the statement needs {ty}").into()),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn is_text(ty: &Type) -> bool {
    matches!(*ty, Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON | Type::UNKNOWN)
        || matches!(ty.kind(), Kind::Enum(_))
}

/// A PostgreSQL column of any type, read as SQLite would hold it.
struct AnyValue(Value);

impl<'a> postgres::types::FromSql<'a> for AnyValue {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<AnyValue, BoxError> {
        let fixed = |n: usize| -> Result<&[u8], BoxError> {
            raw.get(..n).ok_or_else(|| format!("a {ty} of {} bytes", raw.len()).into())
        };
        Ok(AnyValue(match *ty {
            Type::INT8 => Value::Integer(i64::from_be_bytes(fixed(8)?.try_into()?)),
            Type::INT4 => Value::Integer(i64::from(i32::from_be_bytes(fixed(4)?.try_into()?))),
            Type::INT2 => Value::Integer(i64::from(i16::from_be_bytes(fixed(2)?.try_into()?))),
            Type::OID => Value::Integer(i64::from(u32::from_be_bytes(fixed(4)?.try_into()?))),
            Type::BOOL => Value::Integer(i64::from(fixed(1)?[0] != 0)),
            Type::FLOAT8 => Value::Real(f64::from_be_bytes(fixed(8)?.try_into()?)),
            Type::FLOAT4 => Value::Real(f64::from(f32::from_be_bytes(fixed(4)?.try_into()?))),
            Type::NUMERIC => numeric(raw)?,
            Type::BYTEA => Value::Blob(raw.to_vec()),
            Type::JSONB => Value::Text(std::str::from_utf8(raw.get(1..).unwrap_or_default())?.to_owned()),
            _ => Value::Text(std::str::from_utf8(raw)?.to_owned()),
        }))
    }

    fn from_sql_null(_: &Type) -> Result<AnyValue, BoxError> {
        Ok(AnyValue(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A NUMERIC in PostgreSQL's binary form (what `SUM` of a bigint returns):
/// an integer when it has no fraction and fits, a double otherwise.
fn numeric(raw: &[u8]) -> Result<Value, BoxError> {
    let word = |i: usize| -> Result<i16, BoxError> {
        let bytes = raw.get(i * 2..i * 2 + 2).ok_or("a short NUMERIC")?;
        Ok(i16::from_be_bytes([bytes[0], bytes[1]]))
    };
    let (digits, weight, sign) = (word(0)?, word(1)?, word(2)? as u16);
    if sign == 0xC000 {
        return Ok(Value::Real(f64::NAN));
    }
    let mut value = 0f64;
    for i in 0..digits as usize {
        value += f64::from(word(4 + i)?) * 10000f64.powi(i32::from(weight) - i as i32);
    }
    if sign == 0x4000 {
        value = -value;
    }
    match value.fract() == 0.0 && value.abs() < 9.0e15 {
        true => Ok(Value::Integer(value as i64)),
        false => Ok(Value::Real(value)),
    }
}

/// `?N` and `?` placeholders as `$N`, and SQLite's `INDEXED BY name` hints
/// dropped; string literals and quoted names are left alone.
pub fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let (mut chars, mut next_bare) = (sql.char_indices().peekable(), 1);
    while let Some((at, c)) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for (_, inner) in chars.by_ref() {
                    out.push(inner);
                    if inner == c {
                        break;
                    }
                }
            }
            '?' => {
                out.push('$');
                let mut numbered = false;
                while let Some(&(_, digit)) = chars.peek().filter(|(_, d)| d.is_ascii_digit()) {
                    out.push(digit);
                    chars.next();
                    numbered = true;
                }
                if !numbered {
                    out.push_str(&next_bare.to_string());
                    next_bare += 1;
                }
            }
            'I' | 'i' if starts_word(sql, at, "INDEXED BY") => {
                let rest = &sql[at + "INDEXED BY".len()..];
                let name_end = rest.trim_start().find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(0);
                let skip = "INDEXED BY".len() + (rest.len() - rest.trim_start().len()) + name_end;
                for _ in 1..sql[at..at + skip].chars().count() {
                    chars.next();
                }
            }
            _ => out.push(c),
        }
    }
    out
}

fn starts_word(sql: &str, at: usize, word: &str) -> bool {
    let before = sql[..at].chars().next_back();
    sql.get(at..at + word.len()).is_some_and(|s| s.eq_ignore_ascii_case(word))
        && !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// Opens a PostgreSQL connection (the store's connect, with its settings).
pub type Connect = fn(&str) -> Result<postgres::Client, String>;

/// A PostgreSQL connection with its prepared statements.
struct PostgresClient {
    /// Always `Some` until dropped: closing it blocks on its own runtime,
    /// so `Drop` takes it out to close it where that is allowed.
    session: Option<postgres::Client>,
    statements: HashMap<String, postgres::Statement>,
    url: String,
    connect: Connect,
    /// Session settings made after connecting, made again on a new session.
    settings: Vec<String>,
}

impl PostgresClient {
    /// The session.
    fn client(&mut self) -> &mut postgres::Client {
        self.session.as_mut().expect("a session until dropped")
    }

    /// Connects again when the server ended the session (a restart, a
    /// session idle in a transaction for too long, a cut network); callers
    /// do so only between transactions, so a transaction never continues on
    /// another session.
    fn reopen_if_closed(&mut self) -> Result<()> {
        match self.client().is_closed() {
            true => self.reopen(),
            false => Ok(()),
        }
    }

    /// Whether `error` means the session is gone (the server ended it, or
    /// the connection broke), which the client may not have marked yet.
    fn lost_session(&mut self, error: &postgres::Error) -> bool {
        error.is_closed()
            || self.client().is_closed()
            || error.as_db_error().is_some_and(|db| db.severity() == "FATAL" || db.code().code().starts_with("57P"))
    }

    /// A new session, with the settings made on the last one.
    fn reopen(&mut self) -> Result<()> {
        let mut client = (self.connect)(&self.url).map_err(Error::Reconnect)?;
        for setting in &self.settings {
            client.batch_execute(setting)?;
        }
        tracing::warn!("the state database's connection was closed; connected again");
        if let Some(old) = self.session.replace(client) {
            off_the_runtime(move || drop(old));
        }
        self.statements.clear();
        Ok(())
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client().prepare(&to_postgres(sql))?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn query(&mut self, sql: &str, params: &dyn ParamsDyn) -> Result<Vec<postgres::Row>> {
        let statement = self.statement(sql)?;
        let binds = params.binds()?;
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
            binds.iter().map(|b| b as &(dyn postgres::types::ToSql + Sync)).collect();
        Ok(self.client().query(&statement, &refs)?)
    }

    fn execute(&mut self, sql: &str, params: &dyn ParamsDyn) -> Result<usize> {
        let statement = self.statement(sql)?;
        let binds = params.binds()?;
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
            binds.iter().map(|b| b as &(dyn postgres::types::ToSql + Sync)).collect();
        Ok(usize::try_from(self.client().execute(&statement, &refs)?).unwrap_or(usize::MAX))
    }
}

impl Drop for PostgresClient {
    fn drop(&mut self) {
        if let Some(client) = self.session.take() {
            off_the_runtime(move || drop(client));
        }
    }
}

/// Runs `work` here, or on a thread of its own when this thread runs
/// async tasks: the synchronous client blocks on a runtime of its own,
/// which tokio refuses inside another (opening or dropping a store in
/// async code; its statements run on the blocking pool, where it may).
pub(crate) fn off_the_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return work();
    }
    std::thread::scope(|scope| scope.spawn(work).join().expect("a PostgreSQL connection's thread panicked"))
}

/// [`Params`] behind a reference, for the PostgreSQL side.
trait ParamsDyn {
    fn binds(&self) -> Result<Vec<PostgresBind<'_>>>;
}

impl<P: Params> ParamsDyn for P {
    fn binds(&self) -> Result<Vec<PostgresBind<'_>>> {
        (0..self.count())
            .map(|index| {
                let value = self.at(index).to_value().map_err(|message| Error::Conversion { index, message })?;
                Ok(PostgresBind(value))
            })
            .collect()
    }
}

enum Engine {
    Sqlite(rusqlite::Connection),
    Postgres(Box<RefCell<PostgresClient>>),
}

/// An open connection to the state database.
pub struct Connection {
    engine: Engine,
    /// Whether a transaction is open (PostgreSQL: a write outside one is
    /// wrapped in one, so that it is fenced too).
    in_transaction: Cell<bool>,
}

impl Connection {
    /// Wraps an open SQLite connection.
    pub fn sqlite(conn: rusqlite::Connection) -> Connection {
        Connection { engine: Engine::Sqlite(conn), in_transaction: Cell::new(false) }
    }

    /// Connects to the PostgreSQL database at `url` with `connect` (again
    /// with it when the session ends).
    pub fn postgres(url: &str, connect: Connect) -> Result<Connection, String> {
        let client = off_the_runtime(|| connect(url))?;
        let client = PostgresClient {
            session: Some(client),
            statements: HashMap::new(),
            url: url.to_owned(),
            connect,
            settings: Vec::new(),
        };
        Ok(Connection { engine: Engine::Postgres(Box::new(RefCell::new(client))), in_transaction: Cell::new(false) })
    }

    /// The engine's dialect.
    pub fn dialect(&self) -> Dialect {
        match self.engine {
            Engine::Sqlite(_) => Dialect::Sqlite,
            Engine::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The SQLite connection underneath (PRAGMAs and the like), if it is one.
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.engine {
            Engine::Sqlite(conn) => Some(conn),
            Engine::Postgres(_) => None,
        }
    }

    /// Changes a setting of the session (PostgreSQL: made again on every
    /// new session; SQLite: a PRAGMA of the connection).
    pub fn set_session(&self, sql: &str) -> Result<()> {
        self.execute_batch(sql)?;
        if let Engine::Postgres(client) = &self.engine {
            client.borrow_mut().settings.push(sql.to_owned());
        }
        Ok(())
    }

    /// Runs statements without parameters.
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.engine {
            Engine::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Engine::Postgres(client) => {
                let mut client = client.borrow_mut();
                if !self.in_transaction.get() {
                    client.reopen_if_closed()?;
                }
                Ok(client.client().batch_execute(sql)?)
            }
        }
    }

    /// Runs one statement; returns the rows it changed.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        match &self.engine {
            Engine::Sqlite(conn) => Ok(conn.prepare_cached(sql)?.execute(sqlite_params(&params))?),
            Engine::Postgres(client) => self.fenced(|| client.borrow_mut().execute(sql, &params)),
        }
    }

    /// Runs a query expected to return a row; `f` reads it.
    pub fn query_row<T, P: Params, F: FnOnce(&Row<'_>) -> Result<T>>(&self, sql: &str, params: P, f: F) -> Result<T> {
        match &self.engine {
            Engine::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(sql)?;
                let mut rows = statement.query(sqlite_params(&params))?;
                match rows.next()? {
                    Some(row) => f(&Row::Sqlite(row)),
                    None => Err(Error::QueryReturnedNoRows),
                }
            }
            Engine::Postgres(_) => {
                let rows = self.postgres_rows(sql, &params)?;
                rows.first().map_or(Err(Error::QueryReturnedNoRows), |row| f(&Row::Postgres(row)))
            }
        }
    }

    /// A statement, prepared once per connection.
    pub fn prepare_cached(&self, sql: &str) -> Result<Statement<'_>> {
        Ok(Statement { conn: self, sql: sql.to_owned() })
    }

    /// A statement (prepared once per connection as well).
    pub fn prepare(&self, sql: &str) -> Result<Statement<'_>> {
        self.prepare_cached(sql)
    }

    /// The id the last insert gave its row.
    pub fn last_insert_rowid(&self) -> Result<i64> {
        match &self.engine {
            Engine::Sqlite(conn) => Ok(conn.last_insert_rowid()),
            Engine::Postgres(_) => self.query_row("SELECT lastval()", [], |row| row.get(0)),
        }
    }

    /// Opens a transaction: on SQLite an immediate one (it takes the write
    /// lock first), on PostgreSQL one holding the writers' lock and fenced.
    pub fn transaction(&mut self) -> Result<Transaction<'_>> {
        self.begin(true)?;
        Ok(Transaction { conn: self, done: false })
    }

    /// A transaction that is not fenced: the one that takes the lead.
    pub fn unfenced_transaction(&mut self) -> Result<Transaction<'_>> {
        self.begin(false)?;
        Ok(Transaction { conn: self, done: false })
    }

    fn begin(&self, fenced: bool) -> Result<()> {
        match &self.engine {
            Engine::Sqlite(conn) => conn.execute_batch("BEGIN IMMEDIATE")?,
            Engine::Postgres(client) => {
                let mut client = client.borrow_mut();
                client.reopen_if_closed()?;
                // A session the server ended is found out only by using it:
                // nothing has happened in the transaction yet, so begin again on a new one.
                let opened = match begin_locked(&mut client, fenced) {
                    Err(Error::Postgres(error)) if client.lost_session(&error) => {
                        client.reopen()?;
                        begin_locked(&mut client, fenced)
                    }
                    opened => opened,
                };
                if let Err(e) = opened {
                    let _ = client.client().batch_execute("ROLLBACK");
                    return Err(e);
                }
            }
        }
        self.in_transaction.set(true);
        Ok(())
    }

    fn end(&self, sql: &str) -> Result<()> {
        self.in_transaction.set(false);
        self.execute_batch(sql)
    }

    /// Runs `write` in a transaction of its own when none is open
    /// (PostgreSQL), so that a lone write is fenced as well.
    fn fenced<T>(&self, write: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.in_transaction.get() {
            return write();
        }
        self.begin(true)?;
        match write() {
            Ok(value) => self.end("COMMIT").map(|()| value),
            Err(e) => {
                let _ = self.end("ROLLBACK");
                Err(e)
            }
        }
    }

    fn postgres_rows(&self, sql: &str, params: &dyn ParamsDyn) -> Result<Vec<postgres::Row>> {
        let Engine::Postgres(client) = &self.engine else { unreachable!("a PostgreSQL statement on SQLite") };
        match is_write(sql) {
            true => self.fenced(|| client.borrow_mut().query(sql, params)),
            false => {
                let mut client = client.borrow_mut();
                if self.in_transaction.get() {
                    return client.query(sql, params);
                }
                client.reopen_if_closed()?;
                match client.query(sql, params) {
                    // A read outside a transaction may be asked again on a new session.
                    Err(Error::Postgres(error)) if client.lost_session(&error) => {
                        client.reopen()?;
                        client.query(sql, params)
                    }
                    read => read,
                }
            }
        }
    }
}

/// Opens a transaction, takes the writers' lock, then (`fenced`, and this
/// process leads the database) checks that the leadership row still holds
/// its epoch: one round trip for the three.
fn begin_locked(client: &mut PostgresClient, fenced: bool) -> Result<()> {
    let ours = fenced.then(|| fence_of(&client.url)).flatten();
    let mut sql = format!("BEGIN; SELECT pg_advisory_xact_lock({WRITER_LOCK});");
    if ours.is_some() {
        sql.push_str(" SELECT epoch FROM leadership WHERE id = 1;");
    }
    let answers = client.client().simple_query(&sql)?;
    let Some(ours) = ours else { return Ok(()) };
    // The lock's row, then the epoch's (none when nobody ever led).
    let mut rows = answers.iter().filter_map(|answer| match answer {
        postgres::SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    let found = rows.nth(1).and_then(|row| row.get(0)).and_then(|epoch| epoch.parse::<i64>().ok());
    match found {
        Some(found) if found == ours => Ok(()),
        found => Err(Error::Fenced { ours, found: found.unwrap_or(0) }),
    }
}

/// Whether a statement may write (and so must be fenced).
fn is_write(sql: &str) -> bool {
    let head = sql.trim_start();
    !["SELECT", "PRAGMA", "EXPLAIN", "SHOW"]
        .iter()
        .any(|word| head.get(..word.len()).is_some_and(|h| h.eq_ignore_ascii_case(word)))
}

/// A prepared statement.
pub struct Statement<'c> {
    conn: &'c Connection,
    sql: String,
}

impl Statement<'_> {
    /// Runs it; returns the rows it changed.
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        self.conn.execute(&self.sql, params)
    }

    /// Runs it and reads every row with `f`.
    pub fn query_map<T, P: Params, F: FnMut(&Row<'_>) -> Result<T>>(
        &mut self,
        params: P,
        mut f: F,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let mut read = Vec::new();
        self.for_each(params, |row| {
            read.push(f(row));
            Ok(())
        })?;
        Ok(read.into_iter())
    }

    /// Runs it and hands every row to `f` as it comes (SQLite; PostgreSQL
    /// reads the answer first), without keeping them.
    pub fn for_each<P: Params, F: FnMut(&Row<'_>) -> Result<()>>(&mut self, params: P, mut f: F) -> Result<()> {
        match &self.conn.engine {
            Engine::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(&self.sql)?;
                let mut rows = statement.query(sqlite_params(&params))?;
                while let Some(row) = rows.next()? {
                    f(&Row::Sqlite(row))?;
                }
                Ok(())
            }
            Engine::Postgres(_) => {
                self.conn.postgres_rows(&self.sql, &params)?.iter().try_for_each(|row| f(&Row::Postgres(row)))
            }
        }
    }

    /// Runs it and reads the first row with `f`.
    pub fn query_row<T, P: Params, F: FnOnce(&Row<'_>) -> Result<T>>(&mut self, params: P, f: F) -> Result<T> {
        self.conn.query_row(&self.sql, params, f)
    }

    /// Whether it returns a row.
    pub fn exists<P: Params>(&mut self, params: P) -> Result<bool> {
        self.conn.query_row(&self.sql, params, |_| Ok(())).optional().map(|row| row.is_some())
    }
}

/// An open transaction; rolled back when dropped without [`Transaction::commit`].
pub struct Transaction<'c> {
    conn: &'c Connection,
    done: bool,
}

impl Transaction<'_> {
    /// Commits it.
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        self.conn.end("COMMIT")
    }

    /// Rolls it back.
    pub fn rollback(mut self) -> Result<()> {
        self.done = true;
        self.conn.end("ROLLBACK")
    }
}

impl Deref for Transaction<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.done {
            // After a failed statement SQLite may have rolled back already.
            let _ = self.conn.end("ROLLBACK");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered_and_index_hints_go_but_literals_stay() {
        assert_eq!(
            to_postgres("SELECT a FROM t INDEXED BY t_by_a WHERE a = ?1 AND b = '?2' AND c = ?2"),
            "SELECT a FROM t  WHERE a = $1 AND b = '?2' AND c = $2"
        );
        assert_eq!(to_postgres("INSERT INTO t VALUES (?, ?)"), "INSERT INTO t VALUES ($1, $2)");
        assert_eq!(to_postgres("SELECT \"INDEXED BY\" FROM reindexed"), "SELECT \"INDEXED BY\" FROM reindexed");
    }

    #[test]
    fn a_numeric_sum_reads_as_an_integer_or_a_double() {
        // 12345678: two base-10000 digits (1234, 5678), weight 1, positive.
        let raw = [0, 2, 0, 1, 0, 0, 0, 0, 0x04, 0xD2, 0x16, 0x2E];
        assert_eq!(numeric(&raw).unwrap(), Value::Integer(12_345_678));
        // -1.5: digits (1, 5000), weight 0, negative, scale 1.
        let raw = [0, 2, 0, 0, 0x40, 0, 0, 1, 0, 1, 0x13, 0x88];
        assert_eq!(numeric(&raw).unwrap(), Value::Real(-1.5));
    }

    #[test]
    fn writes_are_told_from_reads() {
        assert!(is_write("  INSERT INTO t VALUES (1)"));
        assert!(is_write("UPDATE t SET a = 1 RETURNING a"));
        assert!(!is_write("\n select 1"));
    }
}
