use crate::context_use::ContextUse;
use crate::index::PolicyIndex;
use crate::shape::Shapes;
use cedar_policy::{
    Decision as CedarDecision, Entities, PolicyId, PolicySet, Request, Schema, ValidationMode,
    Validator,
};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use tollgate_core::{Catalog, Decision, Outcome};

/// The obligation that requires evidence for the resource before the action.
pub const OBLIGATION_EVIDENCE_BEFORE: &str = "evidence-before";
const KNOWN_OBLIGATIONS: [&str; 1] = [OBLIGATION_EVIDENCE_BEFORE];
/// The most approvers one action may demand; more is almost surely a typo.
const MAX_APPROVALS: u32 = 5;

/// Limits a pack is loaded under, set by the server's configuration
/// (`max_rule_window_days` in tollgate.yaml), not by the pack: the operator
/// decides how far back a decision may make the store look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// The longest window a temporal rule may have, in seconds.
    pub max_rule_window: i64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_rule_window: tollgate_core::temporal::DEFAULT_MAX_WINDOW,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

/// One problem in a policy pack, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy pack is invalid:\n{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
    #[error("cannot read policy pack: {0}")]
    Io(String),
    /// The request does not fit the schema (unknown parameter, bad resource attribute, …).
    #[error("{0}")]
    BadRequest(String),
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

fn diag_from(file: &SourceFile, err: &dyn miette::Diagnostic, fallback: String) -> Diagnostic {
    let offset = err
        .labels()
        .and_then(|mut l| l.next())
        .map(|l| l.offset())
        .unwrap_or(0);
    let (line, column) = line_col(&file.text, offset);
    let mut message = fallback;
    if let Some(help) = err.help() {
        message = format!("{message} ({help})");
    }
    Diagnostic {
        file: file.name.clone(),
        line,
        column,
        message,
    }
}

/// A validated policy pack: schema, policies and tool catalog.
pub struct PolicyPack {
    schema: Schema,
    policies: PolicySet,
    catalog: Catalog,
    /// Per policy: (approvals, obligations, reason), parsed once at load.
    annotations: HashMap<PolicyId, PolicyNotes>,
    /// SHA-256 over every source file, to record which pack decided.
    digest: String,
    /// The same policies indexed by scope; every decision goes through it.
    index: PolicyIndex,
    /// `playbooks.yaml`, when the pack has one.
    playbooks: Option<tollgate_core::Playbooks>,
    /// `entities.json`: entity data (users, groups, records …) that
    /// AuthZEN evaluations of non-agent subjects are decided against.
    entities: Entities,
    /// `Catalog::sensitive_anywhere`, computed once at load: every decision
    /// redacts with it.
    secret_parameters: Vec<String>,
    /// `rules/*.tgr`: temporal rules, `context.rules.<name>` in policy.
    rules: tollgate_core::temporal::RuleSet,
    /// What agent input must look like for a request to skip Cedar's
    /// schema validation (see `shape.rs`).
    shapes: Shapes,
    /// Per catalog action: its action entity and the action groups above
    /// it, which an unvalidated request's entities must carry for
    /// `action in Action::"contain"` to hold (Cedar adds them itself only
    /// when it validates).
    action_entities: HashMap<String, ActionEntities>,
    /// The schema's entity type names, parsed.
    type_names: HashMap<String, cedar_policy::EntityTypeName>,
    /// What the policies read of `context`: the unchecked path builds only
    /// that (see `context_use.rs`).
    context_use: ContextUse,
    /// Per rule of `rules`, in order: what its scan reads.
    rule_reads: Vec<RuleReads>,
}

/// What the store reads for one temporal rule, resolved through the
/// pack's catalog once at load (`Rule::scan_actions`, `Rule::scan_outcomes`;
/// `None`: any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleReads {
    pub actions: Option<std::collections::BTreeSet<String>>,
    pub outcomes: Option<std::collections::BTreeSet<Outcome>>,
}

#[derive(Debug, Clone, Default)]
struct PolicyNotes {
    approvals: u32,
    obligations: Vec<String>,
    reason: Option<String>,
    approval_ttl: Option<i64>,
    deny_threshold: Option<u32>,
    owner_may_approve: bool,
    revoke_on_deny: bool,
    quarantine_on_deny: bool,
    chain_label: Option<String>,
}

/// Every source file of a pack directory, read but not yet parsed: the
/// schema, `catalog.yaml`, `policies/*.cedar` and `rules/*.tgr` (each in
/// name order), and `playbooks.yaml` and `entities.json` if present.
#[derive(Debug, Clone)]
pub struct PackSources {
    pub schema: SourceFile,
    pub catalog: SourceFile,
    pub policies: Vec<SourceFile>,
    pub rules: Vec<SourceFile>,
    pub playbooks: Option<SourceFile>,
    pub entities: Option<SourceFile>,
}

impl PackSources {
    /// Read them from `dir`; names are relative to it, as diagnostics show them.
    pub fn read(dir: &Path) -> Result<Self, PolicyError> {
        let read = |p: &Path| -> Result<SourceFile, PolicyError> {
            let text = std::fs::read_to_string(p)
                .map_err(|e| PolicyError::Io(format!("{}: {e}", p.display())))?;
            let name = p.strip_prefix(dir).unwrap_or(p).display().to_string();
            Ok(SourceFile { name, text })
        };
        // Every `*.ext` file of a subdirectory, in name order.
        let files = |sub: &str, ext: &str| -> Result<Vec<SourceFile>, PolicyError> {
            let d = dir.join(sub);
            let mut names: Vec<_> = std::fs::read_dir(&d)
                .map_err(|e| PolicyError::Io(format!("{}: {e}", d.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect();
            names.sort();
            names.iter().map(|p| read(p)).collect()
        };
        let optional = |name: &str| -> Result<Option<SourceFile>, PolicyError> {
            let p = dir.join(name);
            p.exists().then(|| read(&p)).transpose()
        };
        Ok(Self {
            schema: read(&dir.join("schema.cedarschema"))?,
            catalog: read(&dir.join("catalog.yaml"))?,
            policies: files("policies", "cedar")?,
            rules: if dir.join("rules").is_dir() {
                files("rules", "tgr")?
            } else {
                vec![]
            },
            playbooks: optional("playbooks.yaml")?,
            entities: optional("entities.json")?,
        })
    }
}

impl PolicyPack {
    /// Read a pack directory: `schema.cedarschema`, `catalog.yaml` and every
    /// `*.cedar` file under `policies/` (sorted by name).
    pub fn load_dir(dir: &Path) -> Result<Self, PolicyError> {
        Self::load_dir_with(dir, LoadOptions::default())
    }

    /// [`Self::load_dir`] under the given limits.
    pub fn load_dir_with(dir: &Path, options: LoadOptions) -> Result<Self, PolicyError> {
        Self::from_pack_sources(&PackSources::read(dir)?, options)
    }

    /// A pack from all its source texts, as [`PackSources::read`] finds them.
    pub fn from_pack_sources(src: &PackSources, options: LoadOptions) -> Result<Self, PolicyError> {
        let pack = Self::from_sources_with_rules(
            &src.schema,
            &src.policies,
            &src.catalog,
            &src.rules,
            options,
        )?;
        let pack = match &src.playbooks {
            Some(p) => pack.with_playbooks(p)?,
            None => pack,
        };
        match &src.entities {
            Some(e) => pack.with_entities(e),
            None => Ok(pack),
        }
    }

    /// Build a pack from source texts; every problem found is reported, not just the first.
    pub fn from_sources(
        schema_src: &SourceFile,
        policy_srcs: &[SourceFile],
        catalog_src: &SourceFile,
    ) -> Result<Self, PolicyError> {
        Self::from_sources_with_rules(
            schema_src,
            policy_srcs,
            catalog_src,
            &[],
            LoadOptions::default(),
        )
    }

    /// [`Self::from_sources`] with temporal rule files (`rules/*.tgr`). The
    /// schema gets a generated common type, `TemporalRules` (one attribute
    /// per rule: `Bool` for `formerly` and `since`, `Long` for `count`),
    /// which the actions' context declares as `rules: TemporalRules` for
    /// policies to read `context.rules.<name>`.
    pub fn from_sources_with_rules(
        schema_src: &SourceFile,
        policy_srcs: &[SourceFile],
        catalog_src: &SourceFile,
        rule_srcs: &[SourceFile],
        options: LoadOptions,
    ) -> Result<Self, PolicyError> {
        let mut diags = Vec::new();
        let mut rules = tollgate_core::temporal::RuleSet::default();
        for f in rule_srcs {
            if let Err(errors) = rules.parse_file(&f.name, &f.text, options.max_rule_window) {
                diags.extend(errors.into_iter().map(|e| Diagnostic {
                    file: e.file,
                    line: e.line,
                    column: e.column,
                    message: e.message,
                }));
            }
        }
        // Appended, so the schema's own line numbers stay as written.
        let schema_text = format!("{}\n{}", schema_src.text, rules.cedar_type());
        let schema = match Schema::from_cedarschema_str(&schema_text) {
            Ok((s, _warnings)) => Some(s),
            Err(e) => {
                diags.push(diag_from(schema_src, &e, e.to_string()));
                None
            }
        };
        let catalog = match Catalog::from_yaml(&catalog_src.text) {
            Ok(c) => Some(c),
            Err(e) => {
                diags.push(Diagnostic {
                    file: catalog_src.name.clone(),
                    line: 1,
                    column: 1,
                    message: e.to_string(),
                });
                None
            }
        };

        let mut set = PolicySet::new();
        let mut context_use = ContextUse::everything();
        let mut origin: HashMap<PolicyId, usize> = HashMap::new();
        let mut annotations = HashMap::new();
        for (fi, file) in policy_srcs.iter().enumerate() {
            let parsed = match PolicySet::from_str(&file.text) {
                Ok(p) => p,
                Err(errs) => {
                    for e in errs.iter() {
                        diags.push(diag_from(file, e, e.to_string()));
                    }
                    continue;
                }
            };
            if parsed.templates().next().is_some() {
                diags.push(Diagnostic {
                    file: file.name.clone(),
                    line: 1,
                    column: 1,
                    message: "templates are not supported in policy files yet".into(),
                });
            }
            let stem = file
                .name
                .trim_end_matches(".cedar")
                .rsplit('/')
                .next()
                .unwrap_or(&file.name)
                .to_string();
            // Policies come back in file order, so each one's text is
            // searched for after the previous one: linear in the file size,
            // where searching from the start was quadratic.
            let mut cursor = 0;
            // Line starts, so locating each policy is a binary search
            // rather than a count of every newline before it.
            let line_starts: Vec<usize> = std::iter::once(0)
                .chain(file.text.match_indices('\n').map(|(i, _)| i + 1))
                .collect();
            for (i, p) in parsed.policies().enumerate() {
                let id = PolicyId::new(
                    p.annotations()
                        .find(|(k, _)| *k == "id")
                        .map(|(_, v)| v)
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("{stem}.{i}")),
                );
                let offset = p
                    .to_cedar()
                    .and_then(|src| {
                        let at = file.text.get(cursor..)?.find(&src)? + cursor;
                        cursor = at + src.len();
                        Some(at)
                    })
                    .unwrap_or(0);
                let line = line_starts.partition_point(|&start| start <= offset);
                let line_start = line_starts.get(line.wrapping_sub(1)).copied().unwrap_or(0);
                let column = file
                    .text
                    .get(line_start..offset)
                    .map_or(0, |s| s.chars().count())
                    + 1;
                let at = |message: String| Diagnostic {
                    file: file.name.clone(),
                    line,
                    column,
                    message,
                };
                match notes_of(p) {
                    Ok(n) => {
                        annotations.insert(id.clone(), n);
                    }
                    Err(m) => diags.push(at(format!("policy {id}: {m}"))),
                }
                if set.add(p.new_id(id.clone())).is_err() {
                    diags.push(at(format!("policy id {id} is defined twice")));
                }
                origin.insert(id, fi);
            }
        }

        if let (Some(schema), Some(catalog)) = (&schema, &catalog) {
            let actions: std::collections::HashSet<String> = schema
                .actions()
                .map(|a| a.id().unescaped().to_string())
                .collect();
            for name in catalog.operations.keys() {
                if !actions.contains(name) {
                    diags.push(Diagnostic {
                        file: catalog_src.name.clone(),
                        line: 1,
                        column: 1,
                        message: format!("operation {name} is not an action in the schema"),
                    });
                }
            }
            if !actions.contains("task.open") {
                diags.push(Diagnostic {
                    file: schema_src.name.clone(),
                    line: 1,
                    column: 1,
                    message: "the schema must declare action \"task.open\"".into(),
                });
            }
            // What the policies read of `context` is found beside strict
            // validation, on the other core: it re-parses every policy
            // (Cedar gives a policy's JSON form only from its text), which
            // would otherwise add about two thirds to a large pack's load.
            let (result, reads) = std::thread::scope(|scope| {
                let reads = scope.spawn(|| ContextUse::of_policies(set.policies()));
                let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
                // A failed analysis keeps everything: never less than read.
                (
                    result,
                    reads.join().unwrap_or_else(|_| ContextUse::everything()),
                )
            });
            context_use = reads;
            for e in result.validation_errors() {
                let file = origin
                    .get(e.policy_id())
                    .and_then(|i| policy_srcs.get(*i))
                    .unwrap_or(schema_src);
                diags.push(diag_from(file, e, e.to_string()));
            }
        }

        match (schema, catalog) {
            (Some(schema), Some(catalog)) if diags.is_empty() => {
                let mut digest_input = Vec::new();
                for f in std::iter::once(schema_src)
                    .chain(policy_srcs)
                    .chain(std::iter::once(catalog_src))
                    .chain(rule_srcs)
                {
                    digest_input.extend_from_slice(f.name.as_bytes());
                    digest_input.push(0);
                    digest_input.extend_from_slice(f.text.as_bytes());
                    digest_input.push(0);
                }
                let secret_parameters = catalog
                    .sensitive_anywhere()
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                let pack = Self {
                    secret_parameters,
                    schema,
                    index: PolicyIndex::new(&set),
                    policies: set,
                    catalog,
                    annotations,
                    digest: tollgate_core::sha256_hex(&digest_input),
                    playbooks: None,
                    entities: Entities::empty(),
                    rules,
                    shapes: Shapes::default(),
                    action_entities: HashMap::new(),
                    type_names: HashMap::new(),
                    context_use,
                    rule_reads: vec![],
                };
                let (problems, probed) = pack.probe();
                if problems.is_empty() {
                    let mut pack = pack;
                    pack.shapes = Shapes::from_schema_json(&schema_json(&schema_text));
                    for (action, kind) in probed {
                        pack.shapes.probed(&action, &kind);
                    }
                    pack.action_entities = action_entities(&pack.schema, &pack.catalog);
                    pack.type_names = type_names(&pack.schema);
                    pack.rule_reads = pack
                        .rules
                        .rules
                        .iter()
                        .map(|r| RuleReads {
                            actions: r.scan_actions(&pack.catalog),
                            outcomes: r.scan_outcomes(),
                        })
                        .collect();
                    Ok(pack)
                } else {
                    Err(PolicyError::Invalid(
                        problems
                            .into_iter()
                            .map(|message| Diagnostic {
                                file: schema_src.name.clone(),
                                line: 1,
                                column: 1,
                                message,
                            })
                            .collect(),
                    ))
                }
            }
            _ => Err(PolicyError::Invalid(diags)),
        }
    }

    /// Add the pack's playbooks (validated against its catalog); they join the digest.
    pub fn with_playbooks(mut self, src: &SourceFile) -> Result<Self, PolicyError> {
        let playbooks =
            tollgate_core::Playbooks::from_yaml(&src.text, &self.catalog).map_err(|message| {
                PolicyError::Invalid(vec![Diagnostic {
                    file: src.name.clone(),
                    line: 1,
                    column: 1,
                    message,
                }])
            })?;
        self.digest = tollgate_core::sha256_hex(
            format!("{}\0{}\0{}", self.digest, src.name, src.text).as_bytes(),
        );
        self.playbooks = Some(playbooks);
        Ok(self)
    }

    /// Add the pack's entity data (Cedar's JSON entity format, checked
    /// against the schema); it joins the digest.
    pub fn with_entities(mut self, src: &SourceFile) -> Result<Self, PolicyError> {
        let entities = Entities::from_json_str(&src.text, Some(&self.schema)).map_err(|e| {
            PolicyError::Invalid(vec![Diagnostic {
                file: src.name.clone(),
                line: 1,
                column: 1,
                message: format!("entity data does not fit the schema: {e}"),
            }])
        })?;
        self.digest = tollgate_core::sha256_hex(
            format!("{}\0{}\0{}", self.digest, src.name, src.text).as_bytes(),
        );
        self.entities = entities;
        Ok(self)
    }

    /// The pack's temporal rules (`rules/*.tgr`).
    pub fn rules(&self) -> &tollgate_core::temporal::RuleSet {
        &self.rules
    }

    /// Each rule of [`Self::rules`] with what its scan reads.
    pub fn rules_with_reads(
        &self,
    ) -> impl Iterator<Item = (&tollgate_core::temporal::Rule, &RuleReads)> {
        self.rules.rules.iter().zip(&self.rule_reads)
    }

    /// The pack's entity data (`entities.json`).
    pub fn entities(&self) -> &Entities {
        &self.entities
    }

    pub fn playbooks(&self) -> Option<&tollgate_core::Playbooks> {
        self.playbooks.as_ref()
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
    /// Parameter names secret on every action (some operation declares
    /// them sensitive), sorted.
    pub fn secret_parameters(&self) -> &[String] {
        &self.secret_parameters
    }
    pub fn digest(&self) -> &str {
        &self.digest
    }
    pub fn policy_count(&self) -> usize {
        self.index.len()
    }

    /// The full policy set, for comparisons with stock Cedar.
    pub fn policy_set(&self) -> &PolicySet {
        &self.policies
    }

    /// Evaluate a built request and apply Tollgate's annotations.
    /// `evidence_present` answers the `evidence-before` obligation.
    pub fn evaluate(
        &self,
        request: &Request,
        entities: &Entities,
        evidence_present: bool,
    ) -> Decision {
        let resp = self.index.is_authorized(request, entities);
        // Evaluation errors can quote request values (secrets among them),
        // so only the failing policies are named, never the message.
        let failed: Vec<String> = resp.errored.iter().map(|id| id.to_string()).collect();
        if !failed.is_empty() {
            let mut d = Decision::deny("a policy failed to evaluate; failing closed");
            d.reasons
                .push(format!("policies that failed: {}", failed.join(", ")));
            d.policies = failed;
            return d;
        }
        let ids = &resp.reasons;
        let notes: Vec<(String, PolicyNotes)> = ids
            .iter()
            .map(|id| {
                (
                    id.to_string(),
                    self.annotations.get(id).cloned().unwrap_or_default(),
                )
            })
            .collect();
        let policies: Vec<String> = notes.iter().map(|(id, _)| id.clone()).collect();
        let mut reasons: Vec<String> = notes.iter().filter_map(|(_, n)| n.reason.clone()).collect();
        match resp.decision {
            CedarDecision::Deny => {
                if policies.is_empty() {
                    reasons.push("no policy permits this request".into());
                }
                Decision {
                    revoke_task: notes
                        .iter()
                        .any(|(_, n)| n.revoke_on_deny || n.quarantine_on_deny),
                    quarantine_agent: notes.iter().any(|(_, n)| n.quarantine_on_deny),
                    chain_labels: notes
                        .iter()
                        .filter_map(|(_, n)| n.chain_label.clone())
                        .collect(),
                    policies,
                    reasons,
                    ..Decision::deny("")
                }
            }
            CedarDecision::Allow => {
                // The most demanding determining permit wins: a second,
                // looser permit must not dilute an approval requirement.
                let approvals = notes.iter().map(|(_, n)| n.approvals).max().unwrap_or(0);
                let mut obligations: Vec<String> = notes
                    .iter()
                    .flat_map(|(_, n)| n.obligations.clone())
                    .collect();
                obligations.sort();
                obligations.dedup();
                if obligations.iter().any(|o| o == OBLIGATION_EVIDENCE_BEFORE) && !evidence_present
                {
                    reasons.push(
                        "evidence for this resource must be recorded in the task first".into(),
                    );
                    return Decision {
                        policies,
                        reasons,
                        obligations,
                        ..Decision::deny("")
                    };
                }
                let outcome = if approvals > 0 {
                    Outcome::ApprovalRequired
                } else {
                    Outcome::Allow
                };
                Decision {
                    outcome,
                    policies,
                    reasons,
                    obligations,
                    approvals_required: approvals,
                    approval_ttl_seconds: notes.iter().filter_map(|(_, n)| n.approval_ttl).min(),
                    deny_threshold: notes.iter().filter_map(|(_, n)| n.deny_threshold).min(),
                    owner_may_approve: notes.iter().any(|(_, n)| n.owner_may_approve),
                    revoke_task: false,
                    quarantine_agent: false,
                    chain_labels: vec![],
                }
            }
        }
    }

    pub(crate) fn index(&self) -> &PolicyIndex {
        &self.index
    }

    pub(crate) fn authorizer_inputs(&self) -> (&Schema, &Catalog) {
        (&self.schema, &self.catalog)
    }

    /// See [`Shapes`] and `action_entities`.
    pub(crate) fn unchecked_inputs(
        &self,
    ) -> (&Shapes, &HashMap<String, ActionEntities>, &ContextUse) {
        (&self.shapes, &self.action_entities, &self.context_use)
    }

    /// `kind::"id"` with the type name parsed at load when the schema
    /// declares it (otherwise parsed now, as [`crate::request::uid`]).
    pub(crate) fn entity_uid(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<cedar_policy::EntityUid, PolicyError> {
        match self.type_names.get(kind) {
            Some(name) => Ok(cedar_policy::EntityUid::from_type_name_and_id(
                name.clone(),
                cedar_policy::EntityId::new(id),
            )),
            None => crate::request::uid(kind, id),
        }
    }
}

/// The schema's JSON form, for [`Shapes`]; `Null` (no fast path) if Cedar
/// cannot give it.
fn schema_json(text: &str) -> serde_json::Value {
    cedar_policy::SchemaFragment::from_cedarschema_str(text)
        .ok()
        .and_then(|(fragment, _)| fragment.to_json_value().ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Each catalog action's entity with its ancestors, from the schema.
fn action_entities(schema: &Schema, catalog: &Catalog) -> HashMap<String, ActionEntities> {
    let Ok(all) = schema.action_entities() else {
        return HashMap::new();
    };
    let mut out = HashMap::new();
    for name in catalog.operations.keys() {
        let Ok(id) = crate::request::uid("Action", name) else {
            continue;
        };
        let Some(entity) = all.get(&id) else {
            continue;
        };
        let mut list = vec![entity.clone()];
        if let Some(ancestors) = all.ancestors(&id) {
            list.extend(ancestors.filter_map(|a| all.get(a).cloned()));
        }
        // Built (and its hierarchy closed) once here: a request adds only
        // its agent and resource, which have no parents.
        let Ok(store) = Entities::from_entities(list, None) else {
            continue;
        };
        out.insert(name.clone(), ActionEntities { uid: id, store });
    }
    out
}

/// A catalog action's entity uid and an entity store holding it and the
/// action groups above it.
pub(crate) struct ActionEntities {
    pub(crate) uid: cedar_policy::EntityUid,
    pub(crate) store: Entities,
}

/// Every entity type name the schema declares, parsed once: parsing a
/// name goes through Cedar's grammar, a few microseconds per request.
fn type_names(schema: &Schema) -> HashMap<String, cedar_policy::EntityTypeName> {
    schema
        .entity_types()
        .map(|t| (t.to_string(), t.clone()))
        .collect()
}

fn notes_of(p: &cedar_policy::Policy) -> Result<PolicyNotes, String> {
    // `Policy::annotation` parses its key on every call, which dominated
    // loading large packs; the pairs are read once instead.
    let annotations: HashMap<&str, &str> = p.annotations().collect();
    let annotation = |key: &str| annotations.get(key).copied();
    let approvals = match annotation("approval") {
        None => 0,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=MAX_APPROVALS).contains(&n) => n,
            _ => {
                return Err(format!(
                    "@approval must be a number from 1 to {MAX_APPROVALS}, got {v:?}"
                ))
            }
        },
    };
    if approvals > 0 && p.effect() == cedar_policy::Effect::Forbid {
        return Err("@approval only makes sense on a permit".into());
    }
    let obligations: Vec<String> = annotation("obligation")
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    for o in &obligations {
        if !KNOWN_OBLIGATIONS.contains(&o.as_str()) {
            return Err(format!(
                "unknown obligation {o:?}; known: {}",
                KNOWN_OBLIGATIONS.join(", ")
            ));
        }
    }
    let approval_ttl = match annotation("approval_ttl") {
        None => None,
        Some(v) => Some(parse_duration(v).ok_or_else(|| {
            format!(
                "@approval_ttl must be a duration such as \"900\", \"15m\" or \"1h\", got {v:?}"
            )
        })?),
    };
    let deny_threshold = match annotation("deny_threshold") {
        None => None,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=MAX_APPROVALS).contains(&n) => Some(n),
            _ => {
                return Err(format!(
                    "@deny_threshold must be a number from 1 to {MAX_APPROVALS}, got {v:?}"
                ))
            }
        },
    };
    let owner_may_approve = match annotation("owner_may_approve") {
        None => false,
        Some("true") => true,
        Some(v) => return Err(format!("@owner_may_approve takes \"true\", got {v:?}")),
    };
    if (owner_may_approve || deny_threshold.is_some() || approval_ttl.is_some())
        && p.effect() == cedar_policy::Effect::Forbid
    {
        return Err(
            "@approval_ttl, @deny_threshold and @owner_may_approve only make sense on a permit"
                .into(),
        );
    }
    let (revoke_on_deny, quarantine_on_deny) = match annotation("on_deny") {
        None => (false, false),
        Some("revoke") => (true, false),
        Some("quarantine") => (false, true),
        Some(v) => {
            return Err(format!(
                "@on_deny takes \"revoke\" or \"quarantine\", got {v:?}"
            ))
        }
    };
    if (revoke_on_deny || quarantine_on_deny) && p.effect() != cedar_policy::Effect::Forbid {
        return Err("@on_deny only makes sense on a forbid".into());
    }
    let chain_label = annotation("chain_label").map(str::to_string);
    Ok(PolicyNotes {
        revoke_on_deny,
        quarantine_on_deny,
        chain_label,
        approvals,
        obligations,
        reason: annotation("reason").map(str::to_string),
        approval_ttl,
        deny_threshold,
        owner_may_approve,
    })
}

/// `900`, `900s`, `15m`, `1h`: seconds, at least 1 and at most a day.
fn parse_duration(v: &str) -> Option<i64> {
    let (num, unit) = match v.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => v.split_at(i),
        None => (v, "s"),
    };
    let n: i64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    (1..=86_400).contains(&secs).then_some(secs)
}
