//! Translation of a DICOM query into SQL, shared by the SQLite and PostgreSQL indexes.
//!
//! Both keep the same tables and columns, so one translation serves both; a [`Dialect`]
//! chooses the few spellings that differ (placeholders, the wildcard operator, an unbounded
//! LIMIT, how integers come back). The SQL mirrors [`pacsgrid_dicom::query::matches`], the
//! reference semantics that the conformance suite checks every backend against.

use crate::index::IndexError;
use pacsgrid_dicom::attrs::{self, AttrKind, IndexedAttr, Level};
use pacsgrid_dicom::query::{self, Matcher};
use pacsgrid_dicom::{Query, QueryKey};

/// The SQL engine a statement is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// SQLite: `?N` placeholders, `GLOB` wildcards.
    Sqlite,
    /// PostgreSQL: `$N` placeholders, `LIKE` wildcards (text columns use the "C" collation,
    /// so `LIKE` is case-sensitive and ranges compare code points, as in SQLite).
    Postgres,
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SqlValue {
    /// An integer column's value.
    Int(i64),
    /// A text column's value.
    Text(String),
}

/// The values of a statement's placeholders, numbered in the order they are pushed.
#[derive(Debug)]
pub(crate) struct Params {
    dialect: Dialect,
    /// The values, the first one for placeholder 1.
    pub(crate) values: Vec<SqlValue>,
}

impl Params {
    /// An empty list for a statement in `dialect`.
    pub(crate) fn new(dialect: Dialect) -> Params {
        Params {
            dialect,
            values: Vec::new(),
        }
    }

    /// Adds a value and returns the placeholder that names it.
    pub(crate) fn bind(&mut self, v: SqlValue) -> String {
        self.values.push(v);
        match self.dialect {
            Dialect::Sqlite => format!("?{}", self.values.len()),
            Dialect::Postgres => format!("${}", self.values.len()),
        }
    }
}

/// Person names match case-insensitively: both sides are lowercased in Rust, so that the
/// two engines fold alike.
pub(crate) fn fold(s: &str) -> String {
    s.to_lowercase()
}

/// Where an indexed attribute lives in the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Column {
    /// A column of the table of `level`; `folded` is its lowercased twin (person names).
    Plain {
        level: Level,
        name: &'static str,
        folded: Option<&'static str>,
        integer: bool,
    },
    /// The distinct non-empty modalities of the study's series.
    ModalitiesInStudy,
    /// The distinct SOP classes of the study's instances.
    SopClassesInStudy,
}

/// Maps a catalogue attribute to its column; `None` means the schema lacks it (a test
/// checks that every catalogue attribute is mapped).
pub(crate) fn column(attr: &IndexedAttr) -> Option<Column> {
    use Level::*;
    let plain = |level, name| Column::Plain {
        level,
        name,
        folded: None,
        integer: false,
    };
    let int = |level, name| Column::Plain {
        level,
        name,
        folded: None,
        integer: true,
    };
    let pn = |level, name, folded| Column::Plain {
        level,
        name,
        folded: Some(folded),
        integer: false,
    };
    Some(match attr.keyword {
        "PatientID" => plain(Patient, "patient_id"),
        "IssuerOfPatientID" => plain(Patient, "issuer"),
        "PatientName" => pn(Patient, "name", "name_lc"),
        "PatientBirthDate" => plain(Patient, "birth_date"),
        "PatientSex" => plain(Patient, "sex"),
        "NumberOfPatientRelatedStudies" => int(Patient, "num_studies"),
        "NumberOfPatientRelatedSeries" => int(Patient, "num_series"),
        "NumberOfPatientRelatedInstances" => int(Patient, "num_instances"),
        "StudyInstanceUID" => plain(Study, "study_uid"),
        "StudyDate" => plain(Study, "date"),
        "StudyTime" => plain(Study, "time"),
        "AccessionNumber" => plain(Study, "accession"),
        "StudyID" => plain(Study, "study_id"),
        "StudyDescription" => plain(Study, "description"),
        "ReferringPhysicianName" => pn(Study, "referring_physician", "referring_physician_lc"),
        "ModalitiesInStudy" => Column::ModalitiesInStudy,
        "SOPClassesInStudy" => Column::SopClassesInStudy,
        "NumberOfStudyRelatedSeries" => int(Study, "num_series"),
        "NumberOfStudyRelatedInstances" => int(Study, "num_instances"),
        "SeriesInstanceUID" => plain(Series, "series_uid"),
        "Modality" => plain(Series, "modality"),
        "SeriesNumber" => int(Series, "number"),
        "SeriesDescription" => plain(Series, "description"),
        "BodyPartExamined" => plain(Series, "body_part"),
        "SeriesDate" => plain(Series, "date"),
        "SeriesTime" => plain(Series, "time"),
        "NumberOfSeriesRelatedInstances" => int(Series, "num_instances"),
        "SOPInstanceUID" => plain(Image, "sop_instance_uid"),
        "SOPClassUID" => plain(Image, "sop_class_uid"),
        "InstanceNumber" => int(Image, "number"),
        _ => return None,
    })
}

fn unmapped(attr: &IndexedAttr) -> IndexError {
    IndexError::Database(format!(
        "attribute {} has no column in the index",
        attr.keyword
    ))
}

fn table(level: Level) -> &'static str {
    match level {
        Level::Patient => "patients",
        Level::Study => "studies",
        Level::Series => "series",
        Level::Image => "instances",
    }
}

/// The alias of a level's table; `sub` names the copy used inside a subquery for keys
/// below the requested level.
fn alias(level: Level, sub: bool) -> &'static str {
    match (level, sub) {
        (Level::Patient, false) => "p",
        (Level::Study, false) => "st",
        (Level::Series, false) => "se",
        (Level::Image, false) => "i",
        (Level::Patient, true) => "px",
        (Level::Study, true) => "stx",
        (Level::Series, true) => "sex",
        (Level::Image, true) => "ix",
    }
}

fn parent(level: Level) -> Option<(Level, &'static str)> {
    match level {
        Level::Patient => None,
        Level::Study => Some((Level::Patient, "patient")),
        Level::Series => Some((Level::Study, "study")),
        Level::Image => Some((Level::Series, "series")),
    }
}

fn child(level: Level) -> Option<Level> {
    match level {
        Level::Patient => Some(Level::Study),
        Level::Study => Some(Level::Series),
        Level::Series => Some(Level::Image),
        Level::Image => None,
    }
}

/// `level`'s table joined with every table above it.
pub(crate) fn from_clause(level: Level) -> String {
    let mut sql = format!("{} {}", table(level), alias(level, false));
    let mut at = level;
    while let Some((up, fk)) = parent(at) {
        let (a, ua) = (alias(at, false), alias(up, false));
        sql.push_str(&format!(" JOIN {} {ua} ON {ua}.id = {a}.{fk}", table(up)));
        at = up;
    }
    sql
}

/// GLOB pattern for a DICOM wildcard: `*` and `?` mean the same; `[` must be literal.
pub(crate) fn glob_wildcard(pattern: &str) -> String {
    pattern.replace('[', "[[]")
}

/// LIKE pattern for a DICOM wildcard: `*` is `%`, `?` is `_`; `%`, `_` and the escape
/// character `\\` must be literal.
pub(crate) fn like_wildcard(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    for c in pattern.chars() {
        match c {
            '\\' | '%' | '_' => {
                out.push('\\');
                out.push(c);
            }
            '*' => out.push('%'),
            '?' => out.push('_'),
            c => out.push(c),
        }
    }
    out
}

/// The wildcard condition of `dialect` for a column and a DICOM pattern.
fn wildcard_sql(col: &str, pattern: &str, params: &mut Params) -> String {
    match params.dialect {
        Dialect::Sqlite => {
            let p = params.bind(SqlValue::Text(glob_wildcard(pattern)));
            format!("{col} GLOB {p}")
        }
        Dialect::Postgres => {
            let p = params.bind(SqlValue::Text(like_wildcard(pattern)));
            format!("{col} LIKE {p}")
        }
    }
}

/// SQL for one matcher against a column, with the values pushed to `params` in placeholder
/// order. Mirrors [`pacsgrid_dicom::query::matches`].
fn matcher_sql(
    col: &str,
    folded: Option<&str>,
    integer: bool,
    kind: AttrKind,
    matcher: &Matcher,
    params: &mut Params,
) -> String {
    // The reference compares text; integers are text in the answers, absent ones empty.
    let text = if integer {
        format!("COALESCE(CAST({col} AS TEXT), '')")
    } else {
        col.to_string()
    };
    let ci = kind == AttrKind::PersonName;
    let lc = folded.unwrap_or(col);
    let eq = |v: &str, params: &mut Params| -> String {
        if integer {
            if let Ok(n) = v.trim().parse::<i64>() {
                // Numeric: "01" finds series 1 (the reference compares text; see report).
                let p = params.bind(SqlValue::Int(n));
                return format!("{col} = {p}");
            }
            let p = params.bind(SqlValue::Text(v.to_string()));
            format!("{text} = {p}")
        } else if ci {
            let p = params.bind(SqlValue::Text(fold(v)));
            format!("{lc} = {p}")
        } else {
            let p = params.bind(SqlValue::Text(v.to_string()));
            format!("{col} = {p}")
        }
    };
    match matcher {
        Matcher::Universal => "TRUE".to_string(),
        Matcher::Single(v) => eq(v, params),
        Matcher::List(values) => {
            if values.is_empty() {
                return "FALSE".to_string();
            }
            let parts: Vec<String> = values.iter().map(|v| eq(v, params)).collect();
            format!("({})", parts.join(" OR "))
        }
        Matcher::Wildcard(p) => {
            if ci {
                wildcard_sql(lc, &fold(p), params)
            } else {
                wildcard_sql(&text, p, params)
            }
        }
        Matcher::Range { lower, upper } => {
            // `> ''` rather than `<> ''`: the same for text, and a bound an index can use.
            let mut sql = format!("({text} > ''");
            if let Some(l) = lower {
                let p = params.bind(SqlValue::Text(l.clone()));
                sql.push_str(&format!(" AND {text} >= {p}"));
            }
            if let Some(u) = upper {
                // An upper bound includes every value it prefixes (a date bound covers
                // date-times of that day; `120000` covers `120000.5`): v <= u or v starts
                // with u. In byte order that is v < u + U+10FFFF, an index-friendly bound
                // (it differs only for a value holding U+10FFFF, a noncharacter, right
                // after the prefix).
                let p = params.bind(SqlValue::Text(format!("{u}\u{10FFFF}")));
                sql.push_str(&format!(" AND {text} < {p}"));
            }
            sql.push(')');
            sql
        }
    }
}

/// SQL for one key; `alias_of` names the table alias of each level in scope.
fn key_sql(
    key: &QueryKey,
    alias_of: &dyn Fn(Level) -> &'static str,
    params: &mut Params,
) -> Result<String, IndexError> {
    let attr = key.attr;
    let col = column(attr).ok_or_else(|| unmapped(attr))?;
    // (rows of the study's set, the study column of those rows, the value column)
    let (set_sql, study_col, value_col) = match col {
        Column::Plain {
            level,
            name,
            folded,
            integer,
        } => {
            let a = alias_of(level);
            let col = format!("{a}.{name}");
            let folded = folded.map(|f| format!("{a}.{f}"));
            return Ok(matcher_sql(
                &col,
                folded.as_deref(),
                integer,
                attr.kind,
                &key.matcher,
                params,
            ));
        }
        Column::ModalitiesInStudy => (
            "series mx WHERE mx.modality <> ''",
            "mx.study",
            "mx.modality",
        ),
        Column::SopClassesInStudy => (
            "study_sop_classes mx WHERE mx.sop_class_uid <> ''",
            "mx.study",
            "mx.sop_class_uid",
        ),
    };
    let study = alias_of(Level::Study);
    // A multi-valued computed attribute matches if any of its values does; with no value at
    // all it is the empty string, which some matchers (e.g. a list holding "") accept.
    // Uncorrelated IN, so that a selective key (ModalitiesInStudy=MG) is answered from the
    // value index instead of testing every study.
    let cond = matcher_sql(value_col, None, false, attr.kind, &key.matcher, params);
    let any = format!("{study}.id IN (SELECT {study_col} FROM {set_sql} AND {cond})");
    if query::matches(attr, &key.matcher, "") {
        Ok(format!(
            "({any} OR NOT EXISTS (SELECT 1 FROM {set_sql} AND {study_col} = {study}.id))"
        ))
    } else {
        Ok(any)
    }
}

/// The WHERE condition selecting the entities at `query.level` that the query matches.
pub(crate) fn where_sql(query: &Query, params: &mut Params) -> Result<String, IndexError> {
    let level = query.level;
    let main = |l: Level| alias(l, false);
    let mut conds = Vec::new();
    let mut below: Vec<&QueryKey> = Vec::new();
    for key in &query.keys {
        if key.attr.level <= level {
            conds.push(key_sql(key, &main, params)?);
        } else {
            below.push(key);
        }
    }
    // Keys below the level (not produced by Query::parse, but possible for queries built in
    // code) select the entities having at least one descendant that matches them all.
    if let Some(deepest) = below.iter().map(|k| k.attr.level).max() {
        let Some(first) = child(level) else {
            return Err(IndexError::Database("key below the IMAGE level".into()));
        };
        let mut from = format!("{} {}", table(first), alias(first, true));
        let mut at = first;
        while at < deepest {
            let Some(next) = child(at) else { break };
            let fk = parent(next).map(|(_, fk)| fk).unwrap_or("id");
            from.push_str(&format!(
                " JOIN {} {} ON {}.{fk} = {}.id",
                table(next),
                alias(next, true),
                alias(next, true),
                alias(at, true)
            ));
            at = next;
        }
        let fk = parent(first).map(|(_, fk)| fk).unwrap_or("id");
        let mut sub = format!(
            "EXISTS (SELECT 1 FROM {from} WHERE {}.{fk} = {}.id",
            alias(first, true),
            alias(level, false)
        );
        let scoped = |l: Level| alias(l, l > level);
        for key in below {
            sub.push_str(" AND ");
            sub.push_str(&key_sql(key, &scoped, params)?);
        }
        sub.push(')');
        conds.push(sub);
    }
    if conds.is_empty() {
        Ok("TRUE".to_string())
    } else {
        Ok(conds.join(" AND "))
    }
}

/// The SELECT expression returning an attribute for an entity of the main query; in
/// PostgreSQL every column comes back as text, so that one decoder reads them all.
fn select_expr(attr: &IndexedAttr, dialect: Dialect) -> Result<String, IndexError> {
    let st = alias(Level::Study, false);
    // string_agg with ORDER BY: SQLite has it since 3.44 (the bundled one is newer).
    Ok(match column(attr).ok_or_else(|| unmapped(attr))? {
        Column::Plain {
            level,
            name,
            integer: true,
            ..
        } if dialect == Dialect::Postgres => {
            format!("CAST({}.{name} AS TEXT)", alias(level, false))
        }
        Column::Plain { level, name, .. } => format!("{}.{name}", alias(level, false)),
        Column::ModalitiesInStudy => format!(
            "(SELECT string_agg(m, '\\' ORDER BY m) FROM \
             (SELECT DISTINCT modality AS m FROM series WHERE study = {st}.id AND modality <> '') mm)"
        ),
        Column::SopClassesInStudy => format!(
            "(SELECT string_agg(sop_class_uid, '\\' ORDER BY sop_class_uid) \
             FROM study_sop_classes WHERE study = {st}.id AND sop_class_uid <> '')"
        ),
    })
}

/// The SQL and parameters answering `Index::find`, and the attribute of each selected
/// column. `limit` 0 means no cap.
pub(crate) fn find_sql(
    query: &Query,
    limit: u32,
    offset: u32,
    dialect: Dialect,
) -> Result<(String, Params, Vec<&'static IndexedAttr>), IndexError> {
    let returned: Vec<&'static IndexedAttr> = attrs::at_or_above(query.level).collect();
    let exprs = returned
        .iter()
        .map(|a| select_expr(a, dialect))
        .collect::<Result<Vec<_>, _>>()?;
    let mut params = Params::new(dialect);
    let cond = where_sql(query, &mut params)?;
    // The limit is written into the SQL, not bound: SQLite's planner reads a bound LIMIT's
    // value, and then re-prepares the cached statement whenever it is bound again (a fifth
    // of a C-FIND's CPU in a profile). It is our own page size, so the statement cache
    // still holds one entry per query shape.
    let limit = match (limit, dialect) {
        (0, Dialect::Sqlite) => "-1".to_string(),
        (0, Dialect::Postgres) => "ALL".to_string(),
        (n, _) => n.to_string(),
    };
    let off = params.bind(SqlValue::Int(i64::from(offset)));
    let sql = format!(
        "SELECT {} FROM {} WHERE {cond} ORDER BY {}.id LIMIT {limit} OFFSET {off}",
        exprs.join(", "),
        from_clause(query.level),
        alias(query.level, false),
    );
    Ok((sql, params, returned))
}

/// The columns of a `StoredInstance`, in its field order, over `from_clause(Level::Image)`.
pub(crate) const STORED_INSTANCE_COLUMNS: &str =
    "st.study_uid, se.series_uid, i.sop_instance_uid, i.sop_class_uid, \
     i.transfer_syntax, i.hash, i.size, i.dataset_offset, p.patient_id, p.issuer";

/// Instances for retrieval in study, series-number and instance-number order (absent
/// numbers last, ties in arrival order): the order `Index::locate` promises.
pub(crate) const RETRIEVAL_ORDER: &str =
    "st.id, se.number IS NULL, se.number, se.id, i.number IS NULL, i.number, i.id";

/// The SQL and parameters answering `Index::locate`.
pub(crate) fn locate_sql(query: &Query, dialect: Dialect) -> Result<(String, Params), IndexError> {
    let mut params = Params::new(dialect);
    // Every instance joined with all its ancestors; the condition tests the ancestor at the
    // query's level, so whole entities are returned, not only the descendants that matched.
    let cond = where_sql(query, &mut params)?;
    let sql = format!(
        "SELECT {STORED_INSTANCE_COLUMNS} FROM {} WHERE {cond} ORDER BY {RETRIEVAL_ORDER}",
        from_clause(Level::Image)
    );
    Ok((sql, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalogue_attribute_has_a_column() {
        for a in attrs::INDEXED {
            let col = column(a).unwrap_or_else(|| panic!("{} unmapped", a.keyword));
            if let Column::Plain {
                level,
                folded,
                integer,
                ..
            } = col
            {
                assert_eq!(level, a.level, "{}", a.keyword);
                assert_eq!(
                    folded.is_some(),
                    a.kind == AttrKind::PersonName,
                    "{}",
                    a.keyword
                );
                assert_eq!(integer, a.kind == AttrKind::Integer, "{}", a.keyword);
            }
        }
    }

    #[test]
    fn glob_patterns_escape_brackets() {
        assert_eq!(glob_wildcard("A[1]*?"), "A[[]1]*?");
    }

    #[test]
    fn like_patterns_escape_their_own_wildcards() {
        assert_eq!(like_wildcard("A%_\\*?"), "A\\%\\_\\\\%_");
    }

    #[test]
    fn placeholders_are_numbered_in_each_dialect() {
        let mut p = Params::new(Dialect::Sqlite);
        assert_eq!(p.bind(SqlValue::Int(1)), "?1");
        assert_eq!(p.bind(SqlValue::Int(2)), "?2");
        let mut p = Params::new(Dialect::Postgres);
        assert_eq!(p.bind(SqlValue::Text("x".into())), "$1");
    }
}
