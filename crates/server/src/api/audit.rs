//! Tamper evidence over HTTP: signed checkpoints, inclusion and
//! consistency proofs, keyed hashes; and executed-action results.

use crate::api::auth::{Admin, ApiJson, ApiPath, ApiQuery, Shared, TaskAuth};
use crate::api::doc::{self, BadInput, Conflict, JsonBody, Secured};
use crate::api::error::{ApiError, ErrorBody};
use crate::service::checkpoints::checkpoint_now;
use crate::service::results::{record_result, ExecutedAction};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tollgate_audit::checkpoint::Checkpoint;
use tollgate_audit::merkle;
use utoipa::{IntoParams, ToSchema};

/// A signed checkpoint with what verifies it.
#[derive(Serialize, ToSchema)]
pub struct SignedCheckpoint {
    #[schema(value_type = doc::Checkpoint)]
    pub checkpoint: Checkpoint,
    /// The exact text the signature covers.
    pub signed_body: String,
    /// Hex Ed25519 public key of the audit log.
    pub public_key: String,
    /// `Ed25519`.
    pub algorithm: String,
}

/// The newest signed checkpoint (one is signed now if the log grew since).
#[utoipa::path(get, path = "/v1/audit/checkpoint", responses(
    (status = 200, description = "The newest checkpoint", body = SignedCheckpoint),
    Secured,
    (status = 404, description = "The audit log is empty (`not_found`)", body = ErrorBody),
), security(("admin" = [])))]
pub async fn checkpoint(
    _: Admin,
    State(state): State<Shared>,
) -> Result<Json<SignedCheckpoint>, ApiError> {
    let cp = checkpoint_now(&state)
        .await?
        .ok_or_else(|| ApiError::NotFound("the audit log is empty".into()))?;
    Ok(Json(SignedCheckpoint {
        signed_body: cp.body(),
        checkpoint: cp,
        public_key: state.audit.public_key_hex(),
        algorithm: "Ed25519".into(),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct Checkpoints {
    #[schema(value_type = Vec<doc::Checkpoint>)]
    pub checkpoints: Vec<Checkpoint>,
    /// Hex Ed25519 public key of the audit log.
    pub public_key: String,
    /// `Ed25519`.
    pub algorithm: String,
}

/// Every signed checkpoint, oldest first.
#[utoipa::path(get, path = "/v1/audit/checkpoints", responses((status = 200, description = "The checkpoints", body = Checkpoints), Secured), security(("admin" = [])))]
pub async fn checkpoints(
    _: Admin,
    State(state): State<Shared>,
) -> Result<Json<Checkpoints>, ApiError> {
    let cps = state.store.checkpoints().await?;
    Ok(Json(Checkpoints {
        checkpoints: cps,
        public_key: state.audit.public_key_hex(),
        algorithm: "Ed25519".into(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProofQuery {
    /// Tree size to prove against; default: the newest checkpoint's.
    #[param(minimum = 1)]
    pub tree_size: Option<u64>,
}

/// An RFC 9162 inclusion proof.
#[derive(Serialize, ToSchema)]
pub struct InclusionProof {
    pub seq: u64,
    pub leaf_index: usize,
    pub tree_size: u64,
    /// Hex.
    pub leaf_hash: String,
    /// Hex sibling hashes, leaf to root.
    pub audit_path: Vec<String>,
    /// Hex Merkle root of the first `tree_size` entries.
    pub root_hash: String,
    /// The signed checkpoint of that size, if one was signed.
    #[schema(value_type = Option<doc::Checkpoint>)]
    pub checkpoint: Option<Checkpoint>,
}

async fn leaves_for(state: &Shared, size: u64) -> Result<Vec<[u8; 32]>, ApiError> {
    let head = state.store.audit_head().await?;
    if size == 0 || size > head.size {
        return Err(ApiError::bad_request(format!(
            "tree size must be 1..={}",
            head.size
        )));
    }
    let leaves = state.store.audit_leaf_hashes(size).await?;
    if leaves.len() as u64 != size {
        return Err(ApiError::Unavailable(
            "the audit log has gaps; run `tollgate audit verify`".into(),
        ));
    }
    Ok(leaves)
}

/// Inclusion proof of entry `seq` in the tree of `tree_size` entries (RFC 9162).
#[utoipa::path(get, path = "/v1/audit/proof/{seq}", params(("seq" = u64, Path, minimum = 1, description = "Sequence number of the entry"), ProofQuery), responses(
    (status = 200, description = "The proof", body = InclusionProof),
    BadInput,
    Secured,
    (status = 404, description = "The audit log is empty (`not_found`)", body = ErrorBody),
), security(("admin" = [])))]
pub async fn proof(
    _: Admin,
    State(state): State<Shared>,
    ApiPath(seq): ApiPath<u64>,
    ApiQuery(q): ApiQuery<ProofQuery>,
) -> Result<Json<InclusionProof>, ApiError> {
    let latest = checkpoint_now(&state).await?;
    let size = match (q.tree_size, &latest) {
        (Some(n), _) => n,
        (None, Some(cp)) => cp.tree_size,
        (None, None) => return Err(ApiError::NotFound("the audit log is empty".into())),
    };
    if seq == 0 || seq > size {
        return Err(ApiError::bad_request(format!("seq must be 1..={size}")));
    }
    let leaves = leaves_for(&state, size).await?;
    let index = (seq - 1) as usize;
    let path = merkle::inclusion_proof(index, &leaves);
    let root = merkle::root(&leaves);
    let cp = state
        .store
        .checkpoints()
        .await?
        .into_iter()
        .find(|c| c.tree_size == size);
    Ok(Json(InclusionProof {
        seq,
        leaf_index: index,
        tree_size: size,
        leaf_hash: hex::encode(leaves[index]),
        audit_path: path.iter().map(hex::encode).collect(),
        root_hash: hex::encode(root),
        checkpoint: cp,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    #[param(minimum = 1)]
    pub first: u64,
    /// At least `first`, at most the log's size.
    #[param(minimum = 1)]
    pub second: u64,
}

/// An RFC 9162 consistency proof.
#[derive(Serialize, ToSchema)]
pub struct ConsistencyProof {
    pub first: u64,
    pub second: u64,
    /// Hex Merkle root of the first `first` entries.
    pub first_root: String,
    /// Hex Merkle root of the first `second` entries.
    pub second_root: String,
    /// Hex hashes.
    pub proof: Vec<String>,
}

/// Consistency proof: the tree of `first` entries is a prefix of the tree of `second`.
#[utoipa::path(get, path = "/v1/audit/consistency", params(ConsistencyQuery), responses((status = 200, description = "The proof", body = ConsistencyProof), BadInput, Secured), security(("admin" = [])))]
pub async fn consistency(
    _: Admin,
    State(state): State<Shared>,
    ApiQuery(q): ApiQuery<ConsistencyQuery>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    if q.first == 0 || q.first > q.second {
        return Err(ApiError::bad_request("need 1 <= first <= second"));
    }
    let leaves = leaves_for(&state, q.second).await?;
    let proof = merkle::consistency_proof(q.first as usize, &leaves);
    Ok(Json(ConsistencyProof {
        first: q.first,
        second: q.second,
        first_root: hex::encode(merkle::root(&leaves[..q.first as usize])),
        second_root: hex::encode(merkle::root(&leaves)),
        proof: proof.iter().map(hex::encode).collect(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HashValue {
    pub value: String,
}

#[derive(Serialize, ToSchema)]
pub struct KeyedHash {
    pub hash: String,
}

/// The keyed hash a secret value is logged as, to check a known value against the log.
#[utoipa::path(post, path = "/v1/audit/hash", request_body = HashValue, responses((status = 200, description = "The keyed hash", body = KeyedHash), JsonBody, Secured), security(("admin" = [])))]
pub async fn hash(
    _: Admin,
    State(state): State<Shared>,
    ApiJson(req): ApiJson<HashValue>,
) -> Result<Json<KeyedHash>, ApiError> {
    Ok(Json(KeyedHash {
        hash: state.audit.hash(&req.value),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResultStatus {
    Succeeded,
    Failed,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionResult {
    pub status: ResultStatus,
    /// The exact command or API call that was executed; 1 to 8192 bytes.
    #[schema(min_length = 1, max_length = 8192)]
    pub command: String,
    /// Lowercase hex SHA-256 of the output.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub output_digest: Option<String>,
}

/// Record what was actually executed under an allowing decision.
#[utoipa::path(post, path = "/v1/actions/{request_id}/result", params(("request_id" = doc::Id, Path, description = "The allowing decision's request id")), request_body = ActionResult, responses(
    (status = 204, description = "Recorded"),
    JsonBody,
    Secured,
    Conflict,
), security(("task" = [])))]
pub async fn action_result(
    auth: TaskAuth,
    State(state): State<Shared>,
    ApiPath(request_id): ApiPath<String>,
    ApiJson(req): ApiJson<ActionResult>,
) -> Result<StatusCode, ApiError> {
    if req.command.trim().is_empty() || req.command.len() > 8192 {
        return Err(ApiError::bad_request("command must be 1 to 8192 bytes"));
    }
    if let Some(d) = &req.output_digest {
        if d.len() != 64
            || !d
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ApiError::bad_request(
                "output_digest must be 64 lowercase hex characters",
            ));
        }
    }
    let status = match req.status {
        ResultStatus::Succeeded => "succeeded",
        ResultStatus::Failed => "failed",
    };
    record_result(
        &state,
        &auth.task,
        &request_id,
        None,
        ExecutedAction {
            status,
            command: &req.command,
            output_digest: req.output_digest.as_deref(),
            extra: json!({}),
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
