"""An agent using the official MCP Python SDK against Tollgate's /mcp.

Run by the e2e test `mcp::the_official_python_sdk_gets_every_tool_call_governed`
with one JSON argument: {url, cred, task_id, approver, admin, world}. It plays
the agent (MCP calls with its task credential) and, over Tollgate's REST API,
the approver and the admin. Every check failing raises; every MCP answer is
printed as one JSON line so the test can look for leaked secrets.
"""

import asyncio
import hashlib
import json
import sys

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

cfg = json.loads(sys.argv[1])


def world():
    with open(cfg["world"]) as f:
        return json.load(f)


def text(result):
    return "\n".join(c.text for c in result.content if getattr(c, "text", None) is not None)


def show(result):
    print(result.model_dump_json(by_alias=True), flush=True)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def rest(method, path, token, body=None):
    async with httpx2.AsyncClient(timeout=30) as c:
        r = await c.request(
            method,
            cfg["url"] + path,
            headers={"Authorization": f"Bearer {token}"},
            json=body,
        )
        return r.status_code, r.json() if r.content else None


def mcp_http(cred, statuses):
    async def record(response):
        statuses.append(response.status_code)

    # Calls held for approval stay open: the read timeout must outlast them.
    return httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {cred}"},
        timeout=httpx2.Timeout(30, read=120),
        event_hooks={"response": [record]},
    )


async def agent():
    statuses = []
    async with mcp_http(cfg["cred"], statuses) as http:
        async with streamable_http_client(cfg["url"] + "/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()

                names = {t.name for t in (await session.list_tools()).tools}
                for t in ["edr_read_alerts", "edr_isolate_host", "iam_disable_account", "tollgate_rollback"]:
                    check(t in names, f"{t} not listed: {names}")
                check("logs_delete" not in names, f"logs_delete listed: {names}")

                r = await session.call_tool("edr_read_alerts", {"host": "web-1"})
                show(r)
                check(not r.is_error and "beacon" in text(r), text(r))
                check("[redacted]" in text(r), "the echoed credential was not cut out")

                r = await session.call_tool("edr_isolate_host", {"host": "web-2", "reason": "beacon"})
                show(r)
                check(r.is_error and "denied by Tollgate (request req_" in text(r), text(r))
                check(world()["hosts"]["web-2"]["isolated"] is False, "denied call acted")

                content = "pid 4242 beacon.exe -> 203.0.113.7:443"
                status, body = await rest(
                    "POST",
                    f"/v1/tasks/{cfg['task_id']}/evidence",
                    cfg["cred"],
                    {
                        "resource": {"type": "Host", "id": "web-2"},
                        "kind": "process-list",
                        "sha256": hashlib.sha256(content.encode()).hexdigest(),
                        "content": content,
                    },
                )
                check(status == 201, f"evidence: {status} {body}")
                r = await session.call_tool("edr_isolate_host", {"host": "web-2", "reason": "beacon"})
                show(r)
                check(not r.is_error, text(r))
                check(world()["hosts"]["web-2"]["isolated"] is True, "allowed call did not act")

                r = await session.call_tool(
                    "http_post", {"url": "https://pastebin.com/raw", "body": "the dump"}
                )
                show(r)
                check(r.is_error and "no-paste-sites" in text(r), text(r))
                check(world()["posts"] == [], "denied post was sent")

                # Held for approval: approve from "another person" while the call waits.
                progress = []

                async def on_progress(value, total, message):
                    progress.append(message or "")

                async def approver():
                    while True:
                        _, v = await rest("GET", "/v1/approvals?status=pending", cfg["approver"])
                        if v["approvals"]:
                            break
                        await asyncio.sleep(0.1)
                    await asyncio.sleep(1.5)
                    check(world()["accounts"]["jdoe"]["enabled"] is True, "acted before approval")
                    status, body = await rest(
                        "POST",
                        f"/v1/approvals/{v['approvals'][0]['id']}/decision",
                        cfg["approver"],
                        {"approve": True, "reason": "confirmed with the account owner"},
                    )
                    check(status == 200, f"approve: {status} {body}")

                approving = asyncio.create_task(approver())
                r = await session.call_tool(
                    "iam_disable_account",
                    {"account": "jdoe", "reason": "jdoe's session launched the beacon"},
                    progress_callback=on_progress,
                )
                await approving
                show(r)
                check(not r.is_error, text(r))
                check(world()["accounts"]["jdoe"]["enabled"] is False, "approved call did not act")
                check(any("held by Tollgate for human approval" in m for m in progress), f"progress: {progress}")

    # Revoked: the credential is refused before anything is decided.
    status, body = await rest(
        "POST", "/v1/revocations", cfg["admin"], {"task_id": cfg["task_id"], "reason": "done"}
    )
    check(200 <= status < 300, f"revoke: {status} {body}")
    statuses = []
    refused = False
    try:
        async with mcp_http(cfg["cred"], statuses) as http:
            async with streamable_http_client(cfg["url"] + "/mcp", http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await asyncio.wait_for(session.initialize(), 20)
                    await asyncio.wait_for(session.call_tool("edr_read_alerts", {"host": "web-1"}), 20)
    except BaseException as e:  # the SDK raises an ExceptionGroup around the HTTP error
        refused = True
        print(json.dumps({"refused": type(e).__name__}), flush=True)
    check(refused and 401 in statuses, f"revoked credential not refused: {statuses}")
    print(json.dumps({"ok": True}), flush=True)


asyncio.run(agent())
