//! Temporal rules: the vocabulary of chain rules beyond `context.history`'s
//! fixed windows, modelled on dogwood's `formerly`, `since` and `count …
//! within`, each with a mandatory window and a scope.
//!
//! ```text
//! // rules/chain.tgr
//! rule secret_read_recently = formerly { label "reads-secret" } within 24h by agent;
//! rule disables_in_incident = count { action "iam.disable_account" and decision allow } within 30d by incident;
//! rule imaged_since_isolated = { action "forensics.image_host" } since { action "edr.isolate_host" } within 7d by resource;
//! ```
//!
//! - `formerly F within W by S`: some earlier action of scope `S` matching
//!   `F` in the last `W` (a `Bool`);
//! - `count F within W by S`: how many (a `Long`);
//! - `A since B within W by S`: there was a `B` in the last `W`, and an `A`
//!   at or after the latest `B` (a `Bool`; false when there was no `B`).
//!
//! Scopes: `tree` (the task's delegation tree, the default), `agent` (the
//! agent across its tasks), `incident` (every agent on the incident),
//! `resource` (everything done to the request's resource). Filters join
//! terms with `and`: `action "a"` (or `action ["a", "b"]`), `tier t`,
//! `label "l"`, `decision allow|deny|approval_required`, `resource "T::id"`.
//!
//! Architecture invariant: pure. This module parses and validates rule
//! files (errors name file, line and column) and defines the meaning of a
//! rule as a function over records ([`Rule::evaluate`]); a store that
//! answers the same question with an index-backed query must agree with it.

use crate::tree_history::Series;
use crate::{ActionRecord, Catalog, Outcome, Tier, UnixTime};
use serde::Serialize;
use std::collections::BTreeSet;

/// The longest window a rule may have, unless configured otherwise: 90 days.
pub const DEFAULT_MAX_WINDOW: i64 = 90 * 24 * 3600;

/// A window as it would be written: `90d`, `36h`, `90m` or `45s`.
pub fn show_window(secs: i64) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs % size == 0 && secs >= size {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// A problem in a rule file, where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct RuleError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Whose past a rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleScope {
    Tree,
    Agent,
    Incident,
    Resource,
}

/// One term of a filter; a filter is their conjunction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Term {
    Action(Vec<String>),
    Tier(Tier),
    Label(String),
    Decision(Outcome),
    Resource(String),
}

/// Which past actions a rule counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Filter {
    pub terms: Vec<Term>,
}

/// A past action as a rule sees it: a record with the incident it was
/// taken for (the tree's, known to whoever reads the record).
pub struct Past<'a> {
    pub record: &'a ActionRecord,
    pub incident_id: &'a str,
}

impl Filter {
    /// The actions a matching record can have, as far as the filter says:
    /// its `action` terms, and the catalog's operations of its `tier` and
    /// `label` terms (a record keeps the tier and labels of its decision's
    /// time; an operation whose label was since removed from the catalog is
    /// no longer looked for). `None` when no term constrains the action.
    pub fn candidate_actions(&self, catalog: &Catalog) -> Option<BTreeSet<String>> {
        let operations = |keep: &dyn Fn(&crate::Operation) -> bool| {
            catalog
                .operations
                .iter()
                .filter(|(_, op)| keep(op))
                .map(|(name, _)| name.clone())
                .collect()
        };
        self.intersection(|t| match t {
            Term::Action(names) => Some(names.iter().cloned().collect()),
            Term::Tier(tier) => Some(operations(&|op| op.tier == *tier)),
            Term::Label(l) => Some(operations(&|op| op.labels.contains(l))),
            Term::Decision(_) | Term::Resource(_) => None,
        })
    }

    /// The outcomes a matching record can have (its `decision` terms), or
    /// `None` when no term says.
    pub fn candidate_outcomes(&self) -> Option<BTreeSet<Outcome>> {
        self.intersection(|t| match t {
            Term::Decision(o) => Some([*o].into()),
            _ => None,
        })
    }

    /// What every term that says (`of` gives `Some`) allows at once; `None`
    /// when no term says.
    fn intersection<T: Ord + Clone>(
        &self,
        of: impl Fn(&Term) -> Option<BTreeSet<T>>,
    ) -> Option<BTreeSet<T>> {
        self.terms
            .iter()
            .filter_map(of)
            .reduce(|before, next| before.intersection(&next).cloned().collect())
    }

    /// Whether a term reads what only a record has (its resource), not
    /// what a [`Series`] keeps.
    pub fn reads_resource(&self) -> bool {
        self.terms.iter().any(|t| matches!(t, Term::Resource(_)))
    }

    /// Whether the records of `s` match; for a filter that does not
    /// [read the resource](Self::reads_resource).
    fn matches_series(&self, s: &Series) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Action(names) => names.iter().any(|n| *n == s.action),
            Term::Tier(tier) => s.tier == *tier,
            Term::Label(l) => s.labels.iter().any(|x| x == l),
            Term::Decision(o) => s.outcome == *o,
            Term::Resource(_) => false,
        })
    }

    pub fn matches(&self, r: &ActionRecord) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Action(names) => names.iter().any(|n| *n == r.action),
            Term::Tier(tier) => r.tier == *tier,
            Term::Label(l) => r.labels.iter().any(|x| x == l),
            Term::Decision(o) => r.outcome == *o,
            Term::Resource(key) => r.resource == *key,
        })
    }
}

/// What a rule asks of the past.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Operator {
    Formerly(Filter),
    Count(Filter),
    Since { then: Filter, after: Filter },
}

/// One named rule: `context.rules.<name>` in policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub name: String,
    pub operator: Operator,
    /// Seconds.
    pub window: i64,
    pub scope: RuleScope,
    /// Where it is defined, for messages.
    pub file: String,
    pub line: usize,
}

impl Rule {
    /// Every action a record this rule looks at can have ([`Filter::candidate_actions`]
    /// over each of its filters), or `None` if some filter does not say.
    pub fn scan_actions(&self, catalog: &Catalog) -> Option<BTreeSet<String>> {
        self.union(|f| f.candidate_actions(catalog))
    }

    /// The outcomes a record this rule looks at can have, or `None`.
    pub fn scan_outcomes(&self) -> Option<BTreeSet<Outcome>> {
        self.union(Filter::candidate_outcomes)
    }

    /// A set over each of the rule's filters, united; `None` if one is.
    fn union<T: Ord>(&self, of: impl Fn(&Filter) -> Option<BTreeSet<T>>) -> Option<BTreeSet<T>> {
        match &self.operator {
            Operator::Formerly(f) | Operator::Count(f) => of(f),
            Operator::Since { then, after } => {
                let mut a = of(then)?;
                a.extend(of(after)?);
                Some(a)
            }
        }
    }
}

/// A rule's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RuleValue {
    Bool(bool),
    Long(i64),
}

impl From<RuleValue> for serde_json::Value {
    fn from(v: RuleValue) -> Self {
        match v {
            RuleValue::Bool(b) => serde_json::Value::Bool(b),
            RuleValue::Long(n) => serde_json::Value::from(n),
        }
    }
}

/// The request a rule is evaluated for: what "same scope" means.
pub struct Subject<'a> {
    pub root_task_id: &'a str,
    pub agent: &'a str,
    pub incident_id: &'a str,
    pub resource: &'a str,
}

impl Rule {
    /// Whether `p` is in this rule's scope for `s`.
    fn in_scope(&self, p: &Past<'_>, s: &Subject<'_>) -> bool {
        match self.scope {
            RuleScope::Tree => p.record.root_task_id == s.root_task_id,
            RuleScope::Agent => p.record.agent == s.agent,
            RuleScope::Incident => p.incident_id == s.incident_id,
            RuleScope::Resource => p.record.resource == s.resource,
        }
    }

    /// The part of `records`, oldest first (as a tree's history and every
    /// scan come from the store), that this rule's window can see at `now`:
    /// a busy tree's older history is passed over without being looked at.
    pub fn in_window<'r>(&self, records: &'r [ActionRecord], now: UnixTime) -> &'r [ActionRecord] {
        let from = now.saturating_sub(self.window);
        &records[records.partition_point(|r| r.ts <= from)..]
    }

    /// The rule's value at `now` over `past` (any order; records outside
    /// the scope or the window are ignored): the reference semantics.
    pub fn evaluate(&self, past: &[Past<'_>], s: &Subject<'_>, now: UnixTime) -> RuleValue {
        let from = now.saturating_sub(self.window);
        let seen = past
            .iter()
            .filter(|p| p.record.ts > from && p.record.ts <= now && self.in_scope(p, s));
        match &self.operator {
            Operator::Formerly(f) => RuleValue::Bool(seen.into_iter().any(|p| f.matches(p.record))),
            Operator::Count(f) => {
                let n = seen.into_iter().filter(|p| f.matches(p.record)).count();
                RuleValue::Long(i64::try_from(n).unwrap_or(i64::MAX))
            }
            Operator::Since { then, after } => {
                let seen: Vec<&Past<'_>> = seen.collect();
                let last_after = seen
                    .iter()
                    .filter(|p| after.matches(p.record))
                    .map(|p| p.record.ts)
                    .max();
                RuleValue::Bool(last_after.is_some_and(|t| {
                    seen.iter().any(|p| {
                        p.record.ts >= t && then.matches(p.record) && !after.matches(p.record)
                    })
                }))
            }
        }
    }
}

impl Rule {
    /// The value of a tree-scoped rule over its tree's `series` at `now`,
    /// each window counted by binary search: equal to [`evaluate`](Self::evaluate)
    /// over the tree's records (a property test holds them to it). `None`
    /// when a filter reads the resource, which a series does not keep:
    /// evaluate the records then.
    pub fn evaluate_series(&self, series: &[Series], now: UnixTime) -> Option<RuleValue> {
        let from = now.saturating_sub(self.window);
        let filters: &[&Filter] = match &self.operator {
            Operator::Formerly(f) | Operator::Count(f) => &[f],
            Operator::Since { then, after } => &[then, after],
        };
        if filters.iter().any(|f| f.reads_resource()) {
            return None;
        }
        let matching = |f: &Filter| -> Vec<&Series> {
            series.iter().filter(|s| f.matches_series(s)).collect()
        };
        Some(match &self.operator {
            Operator::Formerly(f) => {
                RuleValue::Bool(matching(f).iter().any(|s| s.count_in(from, now) > 0))
            }
            Operator::Count(f) => {
                let n: usize = matching(f).iter().map(|s| s.count_in(from, now)).sum();
                RuleValue::Long(i64::try_from(n).unwrap_or(i64::MAX))
            }
            Operator::Since { then, after } => {
                let afters = matching(after);
                let thens = matching(then);
                let last_after = afters.iter().filter_map(|s| s.last_in(from, now)).max();
                RuleValue::Bool(last_after.is_some_and(|t| {
                    // A record at `t` or later that matches `then` and not
                    // `after` (`t > from`, so `[t, now]` is in the window).
                    thens
                        .iter()
                        .filter(|s| !afters.iter().any(|a| std::ptr::eq(*a, **s)))
                        .any(|s| s.count_in(t - 1, now) > 0)
                }))
            }
        })
    }
}

/// The rules of a pack, in definition order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// Parse one rule file into this set; `max_window` bounds every window.
    /// Every problem of the file is returned, each with its position.
    pub fn parse_file(
        &mut self,
        file: &str,
        text: &str,
        max_window: i64,
    ) -> Result<(), Vec<RuleError>> {
        let mut p = Parser {
            file,
            tokens: tokenize(file, text)?,
            at: 0,
            max_window,
        };
        let mut errors = Vec::new();
        while !p.done() {
            match p.rule() {
                Ok(rule) => {
                    if let Some(first) = self.rules.iter().find(|r| r.name == rule.name) {
                        errors.push(RuleError {
                            file: file.into(),
                            line: rule.line,
                            column: 6,
                            message: format!(
                                "rule {} is already defined at {}:{}",
                                rule.name, first.file, first.line
                            ),
                        });
                    } else {
                        self.rules.push(rule);
                    }
                }
                Err(e) => {
                    errors.push(e);
                    p.skip_past_semicolon();
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// The Cedar schema common type of `context.rules`: one attribute per
    /// rule, `Bool` or `Long`.
    pub fn cedar_type(&self) -> String {
        let attrs: Vec<String> = self
            .rules
            .iter()
            .map(|r| {
                let ty = match r.operator {
                    Operator::Count(_) => "Long",
                    Operator::Formerly(_) | Operator::Since { .. } => "Bool",
                };
                format!("\"{}\": {ty}", r.name)
            })
            .collect();
        format!(
            "// Generated from rules/*.tgr: what context.rules holds.\ntype TemporalRules = {{ {} }};\n",
            attrs.join(", ")
        )
    }

    /// Every rule's value over `past` for `s` at `now`, as `context.rules`
    /// holds them (empty when there are no rules).
    pub fn values(
        &self,
        past: &[Past<'_>],
        s: &Subject<'_>,
        now: UnixTime,
    ) -> serde_json::Map<String, serde_json::Value> {
        self.rules
            .iter()
            .map(|r| (r.name.clone(), r.evaluate(past, s, now).into()))
            .collect()
    }

    /// A value of the right type for every rule (false, 0): what the
    /// schema check at load builds requests with.
    pub fn sample(&self) -> serde_json::Map<String, serde_json::Value> {
        self.rules
            .iter()
            .map(|r| {
                let v = match r.operator {
                    Operator::Count(_) => serde_json::json!(0),
                    _ => serde_json::json!(false),
                };
                (r.name.clone(), v)
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    /// A window: a number with its unit, in seconds.
    Duration(i64),
    Sym(char),
}

struct Token {
    tok: Tok,
    line: usize,
    column: usize,
}

fn tokenize(file: &str, text: &str) -> Result<Vec<Token>, Vec<RuleError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        let err = |col: usize, message: String| RuleError {
            file: file.into(),
            line: n + 1,
            column: col + 1,
            message,
        };
        while i < chars.len() {
            let c = chars[i];
            let start = i;
            let at = |tok| Token {
                tok,
                line: n + 1,
                column: start + 1,
            };
            if c.is_whitespace() {
                i += 1;
            } else if c == '/' && chars.get(i + 1) == Some(&'/') || c == '#' {
                break;
            } else if c == '"' {
                i += 1;
                let mut s = String::new();
                while i < chars.len() && chars[i] != '"' {
                    s.push(chars[i]);
                    i += 1;
                }
                if i >= chars.len() {
                    errors.push(err(start, "unterminated string".into()));
                    break;
                }
                i += 1;
                out.push(at(Tok::Str(s)));
            } else if c.is_ascii_digit() {
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                let digits: String = chars[start..i].iter().collect();
                let unit = chars.get(i).copied();
                let scale = match unit {
                    Some('s') => 1,
                    Some('m') => 60,
                    Some('h') => 3600,
                    Some('d') => 86_400,
                    _ => {
                        errors.push(err(
                            start,
                            format!("window {digits} needs a unit: s, m, h or d (e.g. {digits}m)"),
                        ));
                        continue;
                    }
                };
                i += 1;
                match digits
                    .parse::<i64>()
                    .ok()
                    .and_then(|v| v.checked_mul(scale))
                {
                    Some(secs) => out.push(at(Tok::Duration(secs))),
                    None => errors.push(err(start, format!("window {digits} is too long"))),
                }
            } else if c.is_ascii_alphabetic() || c == '_' {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push(at(Tok::Word(chars[start..i].iter().collect())));
            } else if "={}[],;".contains(c) {
                i += 1;
                out.push(at(Tok::Sym(c)));
            } else {
                errors.push(err(start, format!("unexpected character {c:?}")));
                i += 1;
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

struct Parser<'a> {
    file: &'a str,
    tokens: Vec<Token>,
    at: usize,
    max_window: i64,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.at >= self.tokens.len()
    }

    fn error(&self, message: impl Into<String>) -> RuleError {
        let (line, column) = match self.tokens.get(self.at).or(self.tokens.last()) {
            Some(t) => (t.line, t.column),
            None => (1, 1),
        };
        RuleError {
            file: self.file.into(),
            line,
            column,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.at).map(|t| &t.tok)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.at).map(|t| t.tok.clone());
        self.at += 1;
        t
    }

    fn word(&mut self, what: &str) -> Result<String, RuleError> {
        match self.peek() {
            Some(Tok::Word(w)) => {
                let w = w.clone();
                self.at += 1;
                Ok(w)
            }
            _ => Err(self.error(format!("expected {what}"))),
        }
    }

    fn keyword(&mut self, k: &str) -> Result<(), RuleError> {
        match self.peek() {
            Some(Tok::Word(w)) if w == k => {
                self.at += 1;
                Ok(())
            }
            _ => Err(self.error(format!("expected `{k}`"))),
        }
    }

    fn sym(&mut self, c: char) -> Result<(), RuleError> {
        match self.peek() {
            Some(Tok::Sym(s)) if *s == c => {
                self.at += 1;
                Ok(())
            }
            _ => Err(self.error(format!("expected `{c}`"))),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, RuleError> {
        match self.peek() {
            Some(Tok::Str(s)) => {
                let s = s.clone();
                self.at += 1;
                Ok(s)
            }
            _ => Err(self.error(format!("expected {what} as a \"quoted string\""))),
        }
    }

    fn skip_past_semicolon(&mut self) {
        while let Some(t) = self.next() {
            if t == Tok::Sym(';') {
                break;
            }
        }
    }

    /// `rule NAME = EXPR within DURATION [by SCOPE];`
    fn rule(&mut self) -> Result<Rule, RuleError> {
        let line = self.tokens.get(self.at).map_or(1, |t| t.line);
        self.keyword("rule")?;
        let name = self.word("a rule name")?;
        if name.len() > 64 {
            return Err(self.error("a rule name has at most 64 characters"));
        }
        self.sym('=')?;
        let operator = match self.peek() {
            Some(Tok::Word(w)) if w == "formerly" => {
                self.at += 1;
                Operator::Formerly(self.filter()?)
            }
            Some(Tok::Word(w)) if w == "count" => {
                self.at += 1;
                Operator::Count(self.filter()?)
            }
            Some(Tok::Sym('{')) => {
                let then = self.filter()?;
                self.keyword("since")?;
                let after = self.filter()?;
                Operator::Since { then, after }
            }
            _ => return Err(self.error("expected `formerly`, `count` or `{ … } since { … }`")),
        };
        if !matches!(self.peek(), Some(Tok::Word(w)) if w == "within") {
            return Err(self
                .error("expected `within` and a window (every rule has one, e.g. `within 24h`)"));
        }
        self.at += 1;
        let window = match self.next() {
            Some(Tok::Duration(secs)) if secs > 0 && secs <= self.max_window => secs,
            Some(Tok::Duration(_)) => {
                self.at -= 1;
                return Err(self.error(format!(
                    "a window is more than 0 s and at most {} (the configured maximum)",
                    show_window(self.max_window)
                )));
            }
            _ => {
                self.at -= 1;
                return Err(self.error("expected a window such as 30s, 10m, 24h or 30d"));
            }
        };
        let scope = if matches!(self.peek(), Some(Tok::Word(w)) if w == "by") {
            self.at += 1;
            match self.word("a scope")?.as_str() {
                "tree" => RuleScope::Tree,
                "agent" => RuleScope::Agent,
                "incident" => RuleScope::Incident,
                "resource" => RuleScope::Resource,
                other => {
                    self.at -= 1;
                    return Err(self.error(format!(
                        "unknown scope {other:?}: tree, agent, incident or resource"
                    )));
                }
            }
        } else {
            RuleScope::Tree
        };
        self.sym(';')?;
        Ok(Rule {
            name,
            operator,
            window,
            scope,
            file: self.file.to_string(),
            line,
        })
    }

    /// `{ TERM (and TERM)* }`
    fn filter(&mut self) -> Result<Filter, RuleError> {
        self.sym('{')?;
        let mut terms = vec![self.term()?];
        while matches!(self.peek(), Some(Tok::Word(w)) if w == "and") {
            self.at += 1;
            terms.push(self.term()?);
        }
        self.sym('}')?;
        Ok(Filter { terms })
    }

    fn term(&mut self) -> Result<Term, RuleError> {
        let what = self.word("a filter: action, tier, label, decision or resource")?;
        Ok(match what.as_str() {
            "action" => {
                if matches!(self.peek(), Some(Tok::Sym('['))) {
                    self.at += 1;
                    let mut names = vec![self.string("an action")?];
                    while matches!(self.peek(), Some(Tok::Sym(','))) {
                        self.at += 1;
                        names.push(self.string("an action")?);
                    }
                    self.sym(']')?;
                    Term::Action(names)
                } else {
                    Term::Action(vec![self.string("an action")?])
                }
            }
            "tier" => match self.word("a tier")?.as_str() {
                "read" => Term::Tier(Tier::Read),
                "contain" => Term::Tier(Tier::Contain),
                "change" => Term::Tier(Tier::Change),
                "destructive" => Term::Tier(Tier::Destructive),
                other => {
                    self.at -= 1;
                    return Err(self.error(format!(
                        "unknown tier {other:?}: read, contain, change or destructive"
                    )));
                }
            },
            "label" => Term::Label(self.string("a label")?),
            "decision" => match self.word("a decision")?.as_str() {
                "allow" => Term::Decision(Outcome::Allow),
                "deny" => Term::Decision(Outcome::Deny),
                "approval_required" => Term::Decision(Outcome::ApprovalRequired),
                other => {
                    self.at -= 1;
                    return Err(self.error(format!(
                        "unknown decision {other:?}: allow, deny or approval_required"
                    )));
                }
            },
            "resource" => Term::Resource(self.string("a resource (\"Type::id\")")?),
            other => {
                self.at -= 1;
                return Err(self.error(format!(
                    "unknown filter {other:?}: action, tier, label, decision or resource"
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_rule_names_the_actions_and_outcomes_it_can_match() {
        let catalog = Catalog::from_yaml(
            "operations:\n  vault.read_secret: {tier: read, resource_types: [Secret], labels: [reads-secret]}\n  edr.isolate_host: {tier: contain, resource_types: [Host]}\n  edr.release_host: {tier: contain, resource_types: [Host]}\n  siem.query: {tier: read, resource_types: [SiemIndex]}\n",
        )
        .unwrap();
        let set = parse(
            "rule a = formerly { label \"reads-secret\" and decision allow } within 1h by agent;\n\
             rule b = count { tier contain and action [\"edr.isolate_host\", \"siem.query\"] } within 1h;\n\
             rule c = { tier read and decision deny } since { action \"edr.release_host\" and decision allow } within 1h;\n\
             rule d = count { decision deny } within 1h;\n",
        )
        .unwrap();
        let names = |r: &Rule| {
            r.scan_actions(&catalog)
                .map(|a| a.into_iter().collect::<Vec<_>>())
        };
        assert_eq!(
            names(&set.rules[0]),
            Some(vec!["vault.read_secret".to_string()])
        );
        assert_eq!(
            names(&set.rules[1]),
            Some(vec!["edr.isolate_host".to_string()]),
            "terms intersect"
        );
        assert_eq!(
            names(&set.rules[2]),
            Some(vec![
                "edr.release_host".to_string(),
                "siem.query".into(),
                "vault.read_secret".into()
            ]),
            "since: both sides"
        );
        assert_eq!(names(&set.rules[3]), None, "no action term: every action");
        assert_eq!(set.rules[0].scan_outcomes(), Some([Outcome::Allow].into()));
        assert_eq!(set.rules[1].scan_outcomes(), None);
        assert_eq!(
            set.rules[2].scan_outcomes(),
            Some([Outcome::Allow, Outcome::Deny].into())
        );
    }

    fn parse(text: &str) -> Result<RuleSet, Vec<RuleError>> {
        let mut set = RuleSet::default();
        set.parse_file("rules/t.tgr", text, DEFAULT_MAX_WINDOW)?;
        Ok(set)
    }

    fn rec(
        action: &str,
        resource: &str,
        agent: &str,
        root: &str,
        outcome: Outcome,
        ts: i64,
    ) -> ActionRecord {
        ActionRecord {
            root_task_id: root.into(),
            task_id: root.into(),
            agent: agent.into(),
            request_id: format!("req_{ts}"),
            action: action.into(),
            resource: resource.into(),
            tier: if action.starts_with("vault.read") {
                Tier::Read
            } else {
                Tier::Contain
            },
            labels: if action == "vault.read_secret" {
                vec!["reads-secret".into()].into()
            } else {
                vec![].into()
            },
            outcome,
            ts,
        }
    }

    const RULES: &str = r#"
// the four rules of the issue, and one per operator
rule secret_read_recently = formerly { label "reads-secret" } within 24h by agent;
rule disables_in_incident =
    count { action "iam.disable_account" and decision allow } within 30d by incident;
rule imaged_since_isolated = { action "forensics.image_host" } since { action "edr.isolate_host" } within 7d by resource;
rule contain_here_5m = count { tier contain and decision allow } within 5m by resource; # trailing comment
rule either = formerly { action ["edr.isolate_host", "edr.release_host"] } within 1h;
"#;

    #[test]
    fn the_rules_of_the_issue_parse() {
        let set = parse(RULES).unwrap();
        assert_eq!(set.rules.len(), 5);
        let r = set.get("disables_in_incident").unwrap();
        assert_eq!(
            (r.window, r.scope, r.line),
            (30 * 86_400, RuleScope::Incident, 4)
        );
        assert_eq!(
            r.operator,
            Operator::Count(Filter {
                terms: vec![
                    Term::Action(vec!["iam.disable_account".into()]),
                    Term::Decision(Outcome::Allow)
                ]
            })
        );
        assert_eq!(set.get("either").unwrap().scope, RuleScope::Tree);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let cases = [
            (
                "rule a = formerly { label \"x\" };",
                1,
                32,
                "expected `within`",
            ),
            (
                "rule a = formerly { label \"x\" } within 24;",
                1,
                40,
                "needs a unit",
            ),
            (
                "rule a = formerly { label \"x\" } within 100d;",
                1,
                40,
                "at most",
            ),
            (
                "rule a = formerly { colour \"x\" } within 1h;",
                1,
                21,
                "unknown filter \"colour\"",
            ),
            (
                "\n  rule a = count { tier huge } within 1h;",
                2,
                25,
                "unknown tier",
            ),
            (
                "rule a = formerly { label \"x\" } within 1h by planet;",
                1,
                46,
                "unknown scope",
            ),
            (
                "rule a = sometimes { label \"x\" } within 1h;",
                1,
                10,
                "expected `formerly`",
            ),
            (
                "rule a = formerly { label \"x } within 1h;",
                1,
                27,
                "unterminated string",
            ),
        ];
        for (text, line, column, want) in cases {
            let errors = parse(text).unwrap_err();
            let e = &errors[0];
            assert!(e.message.contains(want), "{text}: {e}");
            assert_eq!(
                (e.file.as_str(), e.line, e.column),
                ("rules/t.tgr", line, column),
                "{text}: {e}"
            );
        }
        // Every broken rule is reported, not only the first; a name twice too.
        let errors = parse("rule a = count { tier huge } within 1h;\nrule b = formerly {} within 1h;\nrule c = count { tier read } within 1h;\nrule c = count { tier read } within 2h;").unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[2]
            .message
            .contains("already defined at rules/t.tgr:3"));
    }

    #[test]
    fn each_operator_means_what_the_docs_say() {
        let set = parse(RULES).unwrap();
        let h = 3600;
        let past = [
            rec(
                "vault.read_secret",
                "Secret::db",
                "a1",
                "t1",
                Outcome::Allow,
                1000,
            ),
            rec(
                "edr.isolate_host",
                "Host::web-1",
                "a1",
                "t1",
                Outcome::Allow,
                2000,
            ),
            rec(
                "forensics.image_host",
                "Host::web-1",
                "a2",
                "t2",
                Outcome::Allow,
                3000,
            ),
            rec(
                "edr.isolate_host",
                "Host::web-2",
                "a2",
                "t2",
                Outcome::Allow,
                4000,
            ),
        ];
        let view = |incident: &'static str| -> Vec<Past<'_>> {
            past.iter()
                .map(|r| Past {
                    record: r,
                    incident_id: incident,
                })
                .collect()
        };
        let v = view("INC-1");
        let who = |agent: &'static str, resource: &'static str| Subject {
            root_task_id: "t1",
            agent,
            incident_id: "INC-1",
            resource,
        };
        let rule = |n: &str| set.get(n).unwrap();
        // formerly, by agent, within 24 h.
        assert_eq!(
            rule("secret_read_recently").evaluate(&v, &who("a1", "Url::x"), 5000),
            RuleValue::Bool(true)
        );
        assert_eq!(
            rule("secret_read_recently").evaluate(&v, &who("a2", "Url::x"), 5000),
            RuleValue::Bool(false)
        );
        assert_eq!(
            rule("secret_read_recently").evaluate(&v, &who("a1", "Url::x"), 1000 + 24 * h),
            RuleValue::Bool(false),
            "the window is (now - 24h, now]"
        );
        // since, by resource: web-1 was imaged after it was isolated; web-2 not.
        assert_eq!(
            rule("imaged_since_isolated").evaluate(&v, &who("a1", "Host::web-1"), 5000),
            RuleValue::Bool(true)
        );
        assert_eq!(
            rule("imaged_since_isolated").evaluate(&v, &who("a1", "Host::web-2"), 5000),
            RuleValue::Bool(false)
        );
        assert_eq!(
            rule("imaged_since_isolated").evaluate(&v, &who("a1", "Host::web-3"), 5000),
            RuleValue::Bool(false)
        );
        // count, by resource and by incident.
        assert_eq!(
            rule("contain_here_5m").evaluate(&v, &who("a1", "Host::web-2"), 4100),
            RuleValue::Long(1)
        );
        assert_eq!(
            rule("contain_here_5m").evaluate(&v, &who("a1", "Host::web-2"), 4400),
            RuleValue::Long(0)
        );
        let other = view("INC-2");
        assert_eq!(
            rule("disables_in_incident").evaluate(&other, &who("a1", "Account::x"), 5000),
            RuleValue::Long(0)
        );
        // Only the past: a record after `now` is not seen.
        assert_eq!(
            rule("either").evaluate(&v, &who("a1", "Host::web-1"), 1999),
            RuleValue::Bool(false)
        );
    }

    proptest! {
        /// `formerly F` is `count F > 0`, and a longer window never counts less.
        #[test]
        fn formerly_is_count_above_zero_and_windows_grow(
            ts in proptest::collection::vec(0i64..10_000, 0..40),
            now in 0i64..12_000,
            w1 in 1i64..5_000,
            extra in 0i64..5_000,
        ) {
            let past: Vec<ActionRecord> = ts.iter().enumerate().map(|(i, t)| rec(
                if i % 3 == 0 { "vault.read_secret" } else { "edr.isolate_host" },
                "Host::h", "a", "t", Outcome::Allow, *t)).collect();
            let v: Vec<Past<'_>> = past.iter().map(|r| Past { record: r, incident_id: "I" }).collect();
            let s = Subject { root_task_id: "t", agent: "a", incident_id: "I", resource: "Host::h" };
            let filter = Filter { terms: vec![Term::Label("reads-secret".into())] };
            let rule = |op: Operator, window: i64| Rule { name: "r".into(), operator: op, window, scope: RuleScope::Tree, file: String::new(), line: 1 };
            let count = |w| match rule(Operator::Count(filter.clone()), w).evaluate(&v, &s, now) { RuleValue::Long(n) => n, RuleValue::Bool(_) => -1 };
            let formerly = rule(Operator::Formerly(filter.clone()), w1).evaluate(&v, &s, now);
            prop_assert_eq!(formerly, RuleValue::Bool(count(w1) > 0));
            prop_assert!(count(w1 + extra) >= count(w1));
        }

        /// On records oldest first, every operator sees the same over the
        /// rule's window as over the whole history.
        #[test]
        fn the_window_alone_gives_every_rule_its_value(
            ts in proptest::collection::vec(0i64..10_000, 0..40),
            now in 0i64..12_000,
            window in 1i64..5_000,
        ) {
            let mut ts = ts;
            ts.sort_unstable();
            let past: Vec<ActionRecord> = ts.iter().enumerate().map(|(i, t)| rec(
                ["vault.read_secret", "edr.isolate_host", "forensics.image_host"][i % 3],
                "Host::h", "a", "t", Outcome::Allow, *t)).collect();
            let s = Subject { root_task_id: "t", agent: "a", incident_id: "I", resource: "Host::h" };
            let secret = Filter { terms: vec![Term::Label("reads-secret".into())] };
            let isolate = Filter { terms: vec![Term::Action(vec!["edr.isolate_host".into()])] };
            for operator in [
                Operator::Count(secret.clone()),
                Operator::Formerly(secret.clone()),
                Operator::Since { then: secret, after: isolate },
            ] {
                let rule = Rule { name: "r".into(), operator, window, scope: RuleScope::Tree, file: String::new(), line: 1 };
                let past_of = |records: &[ActionRecord]| -> Vec<RuleValue> {
                    let v: Vec<Past<'_>> = records.iter().map(|r| Past { record: r, incident_id: "I" }).collect();
                    vec![rule.evaluate(&v, &s, now)]
                };
                prop_assert_eq!(past_of(rule.in_window(&past, now)), past_of(&past));
            }
        }

        /// A tree rule read through its tree's series has the value the
        /// record-by-record definition gives, for every operator and every
        /// kind of term; with a resource term the series cannot say.
        #[test]
        fn a_tree_rule_over_series_is_the_rule_over_records(
            raw in proptest::collection::vec((0usize..4, 0usize..3, 0usize..2, -5i64..300), 0..60),
            terms in proptest::collection::vec((0usize..5, 0usize..4), 0..3),
            after_terms in proptest::collection::vec((0usize..5, 0usize..4), 0..3),
            kind in 0usize..3,
            now in 0i64..320,
            window in 1i64..200,
        ) {
            let actions = ["vault.read_secret", "edr.isolate_host", "forensics.image_host", "logs.delete"];
            let outcomes = [Outcome::Allow, Outcome::Deny, Outcome::ApprovalRequired];
            let resources = ["Host::a", "Host::b"];
            let mut records: Vec<ActionRecord> = raw
                .iter()
                .map(|&(a, o, r, ts)| rec(actions[a], resources[r], "a", "t", outcomes[o], ts))
                .collect();
            records.sort_by_key(|r| r.ts);
            let term = |&(k, i): &(usize, usize)| match k {
                0 => Term::Action(vec![actions[i].into(), actions[(i + 1) % 4].into()]),
                1 => Term::Tier([Tier::Read, Tier::Contain, Tier::Change, Tier::Destructive][i]),
                2 => Term::Label(["reads-secret", "other"][i % 2].into()),
                3 => Term::Decision(outcomes[i % 3]),
                _ => Term::Resource(resources[i % 2].into()),
            };
            let filter = |t: &[(usize, usize)]| Filter { terms: t.iter().map(term).collect() };
            let operator = match kind {
                0 => Operator::Formerly(filter(&terms)),
                1 => Operator::Count(filter(&terms)),
                _ => Operator::Since { then: filter(&terms), after: filter(&after_terms) },
            };
            let reads_resource = terms.iter().chain(if kind == 2 { &after_terms[..] } else { &[] }).any(|&(k, _)| k == 4);
            let rule = Rule { name: "r".into(), operator, window, scope: RuleScope::Tree, file: String::new(), line: 1 };
            let s = Subject { root_task_id: "t", agent: "a", incident_id: "I", resource: "Host::a" };
            let past: Vec<Past<'_>> = records.iter().map(|r| Past { record: r, incident_id: "I" }).collect();
            let history = crate::TreeHistory::new(records.clone());
            let got = rule.evaluate_series(history.series(), now);
            if reads_resource {
                prop_assert_eq!(got, None);
            } else {
                prop_assert_eq!(got, Some(rule.evaluate(&past, &s, now)));
            }
        }
    }
}
