// Calls the keeptyping hook API through a client generated from the live /openapi.json
// (openapi-typescript for the types, openapi-fetch for the calls), and checks every answer:
// start, batch, stop, sessions, budget, and one error. Type-checked with `tsc` against the
// generated types, so a route or field missing from the document fails the build.
//
//   OPENAPI_URL=http://127.0.0.1:8080/openapi.json npm run generate && npm run build
//   node dist/calls.js BASE_URL HOOK_TOKEN ACCOUNT_ID
//
// Prints one line per check and closes with `typescript: N passed, M failed`; exits 1 on any
// failure.
import createClient from "openapi-fetch";
import type { components, paths } from "./generated/schema.js";

type Priority = components["schemas"]["Priority"];

const [baseUrl, token, account] = process.argv.slice(2);
if (!baseUrl || !token || !account) {
  console.error("usage: node dist/calls.js BASE_URL HOOK_TOKEN ACCOUNT_ID");
  process.exit(2);
}

let passed = 0;
let failed = 0;
function check(name: string, ok: boolean, detail: unknown = ""): void {
  if (ok) {
    passed += 1;
    console.log(`ok   ${name}`);
  } else {
    failed += 1;
    console.log(`FAIL ${name}: ${JSON.stringify(detail)}`);
  }
}

const client = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${token}` } });
// Chats of this client only, so that the Python run beside it changes nothing here.
const FIRST = "7200001";
const SECOND = 7200002;
const high: Priority = "high";

const start = await client.POST("/v1/typing/start", {
  body: { account_id: account, chat_id: FIRST, chatter_id: "ts-tab-1" },
});
check("start answers 200", start.response.status === 200 && start.data !== undefined, start.error);
if (start.data) {
  check("start: outcome started", start.data.outcome === "started", start.data.outcome);
  check("start: the session is the chat", start.data.session?.chat_id === FIRST, start.data.session);
  check("start: a refire interval is given", (start.data.refire_interval_ms ?? 0) > 0, start.data.refire_interval_ms);
}

const batch = await client.POST("/v1/typing/batch", {
  body: {
    events: [
      { action: "start", account_id: account, chat_id: SECOND, priority: high },
      { action: "stop", account_id: account, chat_id: FIRST, chatter_id: "ts-tab-1" },
    ],
  },
});
check("batch answers 200", batch.response.status === 200 && batch.data !== undefined, batch.error);
if (batch.data) {
  const outcomes = batch.data.results.map((r) => r.outcome);
  check("batch: one result per event, in order", JSON.stringify(outcomes) === '["started","stopped"]', outcomes);
}

const sessions = await client.GET("/v1/typing/sessions");
check("sessions answers 200", sessions.response.status === 200 && sessions.data !== undefined, sessions.error);
if (sessions.data) {
  const mine = sessions.data.sessions.filter((s) => s.chat_id === FIRST || s.chat_id === String(SECOND));
  check("sessions: the batch's start is live, the stopped chat is gone",
    mine.length === 1 && mine[0]?.chat_id === String(SECOND), mine.map((s) => s.chat_id));
  check("sessions: count matches the list", sessions.data.count === sessions.data.sessions.length, sessions.data.count);
  check("sessions: the priority is kept", mine[0]?.priority === "high", mine[0]?.priority);
}

const stop = await client.POST("/v1/typing/stop", { body: { account_id: account, chat_id: SECOND } });
check("stop answers 200", stop.response.status === 200 && stop.data !== undefined, stop.error);
check("stop: outcome stopped", stop.data?.outcome === "stopped", stop.data?.outcome);

const budget = await client.GET("/v1/budget");
check("budget answers 200", budget.response.status === 200 && budget.data !== undefined, budget.error);
if (budget.data) {
  check("budget: at least one budget", budget.data.budgets.length >= 1, budget.data.budgets);
  for (const b of budget.data.budgets) {
    check(`budget ${b.name}: limit and keys`, b.limit_per_minute >= 1 && b.keys.length >= 1, [b.limit_per_minute, b.keys]);
    check(`budget ${b.name}: lit and waiting counts`, b.sessions_lit >= 0 && b.sessions_waiting >= 0,
      [b.sessions_lit, b.sessions_waiting]);
  }
}

const bad = await client.POST("/v1/typing/start", { body: { account_id: "not-an-account", chat_id: FIRST } });
check("an invalid account id answers 422", bad.response.status === 422, bad.response.status);
check("the error names its code", bad.error?.error.code === "invalid_account_id", bad.error);

console.log(`typescript: ${passed} passed, ${failed} failed`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);
