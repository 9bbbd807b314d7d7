"""Calls the keeptyping hook API through a client that openapi-python-client generated from the
live /openapi.json, and checks every answer: start, batch, stop, sessions, budget, and one error.

    python3 calls.py BASE_URL HOOK_TOKEN ACCOUNT_ID GENERATED_DIR

GENERATED_DIR is the generator's output (it holds the `keeptyping_hook_api_client` package).
Prints one line per check and closes with `python: N passed, M failed`; exits 1 on any failure.
"""

import sys

base_url, token, account, generated = sys.argv[1:5]
sys.path.insert(0, generated)

from keeptyping_hook_api_client import AuthenticatedClient  # noqa: E402
from keeptyping_hook_api_client.api.typing import (  # noqa: E402
    get_budget,
    list_sessions,
    start_typing,
    stop_typing,
    typing_batch,
)
from keeptyping_hook_api_client.models import (  # noqa: E402
    BatchAction,
    BatchEvent,
    BatchRequest,
    BatchResponse,
    BudgetResponse,
    ErrorResponse,
    Priority,
    SessionsResponse,
    StartRequest,
    StopRequest,
    TypingResponse,
)

passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}: {detail}")


def answer(name, resp, model):
    """The parsed body of a 200 of type `model`, or None (and a failed check)."""
    ok = resp.status_code == 200 and isinstance(resp.parsed, model)
    check(f"{name} answers 200 with a {model.__name__}", ok, f"{resp.status_code} {resp.content[:300]!r}")
    return resp.parsed if ok else None


# Chats of this client only, so that the TypeScript run beside it changes nothing here.
FIRST, SECOND = "7100001", 7100002

client = AuthenticatedClient(base_url=base_url, token=token, raise_on_unexpected_status=True)
with client:
    r = answer("start", start_typing.sync_detailed(client=client, body=StartRequest(account_id=account, chat_id=FIRST, chatter_id="py-tab-1")), TypingResponse)
    if r:
        check("start: outcome started", r.outcome == "started", r.outcome)
        check("start: the session is the chat", r.session.chat_id == FIRST and r.session.account_id == account, r.session)
        check("start: a refire interval is given", isinstance(r.refire_interval_ms, int) and r.refire_interval_ms > 0, r.refire_interval_ms)

    events = [
        BatchEvent(action=BatchAction.START, account_id=account, chat_id=SECOND, priority=Priority.HIGH),
        BatchEvent(action=BatchAction.STOP, account_id=account, chat_id=FIRST, chatter_id="py-tab-1"),
    ]
    r = answer("batch", typing_batch.sync_detailed(client=client, body=BatchRequest(events=events)), BatchResponse)
    if r:
        check("batch: one result per event, in order", [x.outcome for x in r.results] == ["started", "stopped"], [x.outcome for x in r.results])

    r = answer("sessions", list_sessions.sync_detailed(client=client), SessionsResponse)
    if r:
        mine = {s.chat_id: s for s in r.sessions if s.chat_id in (FIRST, str(SECOND))}
        check("sessions: the batch's start is live, the stopped chat is gone", set(mine) == {str(SECOND)}, sorted(mine))
        check("sessions: count matches the list", r.count == len(r.sessions), (r.count, len(r.sessions)))
        if str(SECOND) in mine:
            check("sessions: the priority is kept", mine[str(SECOND)].priority == Priority.HIGH, mine[str(SECOND)].priority)

    r = answer("stop", stop_typing.sync_detailed(client=client, body=StopRequest(account_id=account, chat_id=SECOND)), TypingResponse)
    if r:
        check("stop: outcome stopped", r.outcome == "stopped", r.outcome)

    r = answer("budget", get_budget.sync_detailed(client=client), BudgetResponse)
    if r:
        check("budget: at least one budget", len(r.budgets) >= 1, r.budgets)
        for b in r.budgets:
            check(f"budget {b.name}: limit and keys", b.limit_per_minute >= 1 and len(b.keys) >= 1, (b.limit_per_minute, b.keys))
            check(f"budget {b.name}: lit and waiting counts", b.sessions_lit >= 0 and b.sessions_waiting >= 0, (b.sessions_lit, b.sessions_waiting))

    resp = start_typing.sync_detailed(client=client, body=StartRequest(account_id="not-an-account", chat_id=FIRST))
    ok = resp.status_code == 422 and isinstance(resp.parsed, ErrorResponse)
    check("an invalid account id answers a parsed 422 error", ok, f"{resp.status_code} {resp.content[:200]!r}")
    if ok:
        check("the error names its code", resp.parsed.error.code == "invalid_account_id", resp.parsed.error.code)

print(f"python: {passed} passed, {failed} failed")
sys.exit(1 if failed or not passed else 0)
