"""schemathesis hooks for the contract test (`.ci/contract`).

Before every request: the bearer token of the operation's security scheme
(the first one when it accepts several), whatever schemathesis generated;
and, for half the requests to operations that take a task, approval or
request id, the ids of live data, so the success answers are checked
against the document too (random ids only ever reach 403 and 404). When a
test case has ended the task (closed, revoked, its incident resolved, its
agent quarantined or revoked), a new one is opened first; when one has
removed, disabled or re-registered the approver, the PEP or the agent (schemathesis
reuses names it has seen in answers), it is registered again. Requests to `/mcp` that initialise get
the headers a client sends (half the others too). A long-poll is cut to 2 s.
"""

import itertools
import json
import os
import random
import sys
import threading

import schemathesis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import contract_setup as setup  # noqa: E402

ADDR = os.environ["TOLLGATE_CONTRACT_ADDR"]
TOKENS = json.loads(os.environ["TOLLGATE_CONTRACT_TOKENS"])
STATE = json.loads(os.environ["TOLLGATE_CONTRACT_STATE"])
LOCK = threading.Lock()
RNG = random.Random(4711)
INCIDENTS = itertools.count(1)
# Path parameters that name live data, by operation path.
LIVE_IDS = {
    "/v1/tasks/{id}": ("id", "task_id"),
    "/v1/tasks/{id}/renew": ("id", "task_id"),
    "/v1/tasks/{id}/close": ("id", "task_id"),
    "/v1/tasks/{id}/evidence": ("id", "task_id"),
    "/v1/tasks/{id}/delegate": ("id", "task_id"),
    "/v1/tasks/{id}/rollback": ("id", "task_id"),
    "/v1/approvals/{id}": ("id", "approval_id"),
    "/v1/approvals/{id}/decision": ("id", "approval_id"),
    "/v1/actions/{request_id}/result": ("request_id", "request_id"),
}


def live_pep():
    """The PEP key, after registering the PEP again if a test case removed or
    re-registered it (DELETE /v1/peps/{name}, POST /v1/peps with its name)."""
    with LOCK:
        status, _ = setup.call(
            ADDR, "POST", "/v1/introspect", TOKENS["pep"], {"token": "probe"}, ok=(200, 401)
        )
        if status == 401:
            _, pep = setup.call(ADDR, "POST", "/v1/peps", TOKENS["admin"], {"name": "contract-pep"})
            TOKENS["pep"] = pep["key"]
        return TOKENS["pep"]


def live_task():
    """The current task's ids, after opening a new task if this one ended."""
    pep = live_pep()
    with LOCK:
        _, seen = setup.call(ADDR, "POST", "/v1/introspect", pep, {"token": STATE["task"]})
        if not seen["active"]:
            STATE.update(setup.open_task(ADDR, TOKENS, f"INC-contract-{next(INCIDENTS)}"))
        return dict(STATE)


def live_approver():
    """The approver key, after registering the approver again if a test case
    removed, disabled or re-registered it (schemathesis reuses the names it
    sees in answers)."""
    with LOCK:
        probe = "/v1/approvals?task=contract-probe"
        status, _ = setup.call(ADDR, "GET", probe, TOKENS["approver"], ok=(200, 401))
        if status == 401:
            TOKENS["approver"] = setup.approver(ADDR, TOKENS["admin"])
        return TOKENS["approver"]


def live_svid():
    """The agent's SVID, after enrolling the agent again if a test case
    re-registered or revoked it (an SVID of an earlier registration fails)."""
    with LOCK:
        status, _ = setup.call(ADDR, "POST", "/v1/agents/svid", TOKENS["svid"], ok=(200, 401, 403))
        if status != 200:
            TOKENS["svid"] = setup.enrol(ADDR, TOKENS["admin"])
        return TOKENS["svid"]


def scheme(case):
    for requirement in case.operation.definition.raw.get("security") or []:
        for name in requirement:
            return name
    return None


@schemathesis.hook
def before_call(context, case, kwargs):
    name = scheme(case)
    if name is None:
        return
    uses_task = name == "task" or case.operation.path in LIVE_IDS
    state = live_task() if uses_task else STATE
    if name == "task":
        token = state["task"]
    elif name == "approver":
        token = live_approver()
    elif name == "svid":
        token = live_svid()
    elif name == "pep":
        token = live_pep()
    else:
        token = TOKENS[name]
    if case.headers is None:
        case.headers = {}
    case.headers["Authorization"] = f"Bearer {token}"
    live = LIVE_IDS.get(case.operation.path)
    if live and RNG.random() < 0.5:
        param, key = live
        case.path_parameters[param] = state[key]
    initialize = isinstance(case.body, dict) and case.body.get("method") == "initialize"
    if case.operation.path == "/mcp" and (initialize or RNG.random() < 0.5):
        # A request a client would send: no session yet, the right Accept.
        case.headers.pop("mcp-session-id", None)
        case.headers["Accept"] = "application/json, text/event-stream"
    if case.operation.path == "/v1/approvals/{id}" and isinstance(case.query, dict):
        # A long-poll holds its answer up to approvals.max_wait_seconds (60
        # by default) while the approval is pending: keep the run short.
        try:
            if int(str(case.query.get("wait"))) > 2:
                case.query["wait"] = 2
        except ValueError:
            pass


@schemathesis.hook
def after_call(context, case, response):
    # TOLLGATE_CONTRACT_LOG=FILE: one line per request, to see what was reached.
    log = os.environ.get("TOLLGATE_CONTRACT_LOG")
    if log:
        with LOCK, open(log, "a") as f:
            f.write(f"{case.operation.label} {response.status_code}\n")
