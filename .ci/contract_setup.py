"""Credentials and data for the contract test (`.ci/contract`), made through
the API as a user would. Standard library only: used by the driver and by
the schemathesis hooks (`contract_hooks.py`), which reopen a task when the
run has ended the one they were using."""

import hashlib
import json
import urllib.error
import urllib.request

AGENT = "spiffe://acme.test/agent/ir-responder/i-1"
APPROVER = "contract@acme.test"


class ApiError(Exception):
    pass


def call(addr, method, path, token=None, body=None, ok=(200, 201, 204)):
    """(status, JSON body); raises ApiError on a status not in `ok`."""
    req = urllib.request.Request(addr + path, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, data, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    if status not in ok:
        raise ApiError(f"{method} {path}: {status} {raw.decode(errors='replace')[:500]}")
    return status, (json.loads(raw) if raw else None)


def enrol(addr, admin):
    """Register the agent (again) and attest: a fresh SVID."""
    _, reg = call(addr, "POST", "/v1/agents", admin, {"spiffe_id": AGENT, "owner": "contract"})
    _, att = call(addr, "POST", "/v1/agents/attest", None, {"join_token": reg["join_token"]})
    return att["svid"]


def approver(addr, admin):
    """Register (again) the approver: a fresh key, enabled."""
    _, reg = call(addr, "POST", "/v1/approvers", admin, {"name": APPROVER, "role": "secops-lead"})
    return reg["key"]


def credentials(addr, admin):
    """Admin token in, one credential of every other kind out."""
    _, pep = call(addr, "POST", "/v1/peps", admin, {"name": "contract-pep"})
    return {
        "admin": admin,
        "pep": pep["key"],
        "approver": approver(addr, admin),
        "svid": enrol(addr, admin),
    }


def open_task(addr, tokens, incident):
    """Open a task on a fresh incident and give it something to show: an
    executed reversible action (so the rollback plan has a step), an
    allowing decision with no result yet, and a pending approval. Returns
    the ids the hooks put into paths."""
    admin = tokens["admin"]
    # Earlier test cases may have frozen the gateway or quarantined the agent.
    call(addr, "POST", "/v1/unfreeze", admin)
    call(addr, "POST", "/v1/agents/release", admin, {"agent": AGENT}, ok=(200, 404, 409))
    body = {
        "incident": {"id": incident, "class": "malware", "severity": "high"},
        "environment": "prod",
        "playbook": "contain-malware",
        "intent": "contain the beacon on web-1 (contract test)",
        "ttl_seconds": 3600,
    }
    status, task = call(addr, "POST", "/v1/tasks", tokens["svid"], body, ok=(201, 401, 403))
    if status != 201:
        # The agent was revoked or its SVID expired: enrol again.
        tokens["svid"] = enrol(addr, admin)
        _, task = call(addr, "POST", "/v1/tasks", tokens["svid"], body)
    cred, task_id = task["credential"], task["task_id"]
    host = {"type": "Host", "id": "web-1"}
    content = "process list of web-1"
    call(
        addr,
        "POST",
        f"/v1/tasks/{task_id}/evidence",
        cred,
        {
            "resource": host,
            "kind": "process-list",
            "sha256": hashlib.sha256(content.encode()).hexdigest(),
            "content": content,
        },
    )

    def authorize(action, resource):
        ask = {"action": action, "resource": resource, "intent": "contract test"}
        return call(addr, "POST", "/v1/authorize", cred, ask)[1]

    isolate = authorize("edr.isolate_host", host)
    if isolate["decision"] == "allow":
        call(
            addr,
            "POST",
            f"/v1/actions/{isolate['request_id']}/result",
            cred,
            {"status": "succeeded", "command": "edr isolate web-1"},
        )
    read = authorize("edr.read_alerts", host)
    approval = authorize("iam.disable_account", {"type": "Account", "id": "jdoe"})
    return {
        "task": cred,
        "task_id": task_id,
        "request_id": read["request_id"],
        "approval_id": approval.get("approval_id", "none"),
        "incident": incident,
    }
