//! The Lua scripts replicas run in Redis. Each touches the keys of one hash tag only, so each
//! runs on a single Redis and on Redis Cluster alike.

use std::sync::LazyLock;

use redis::Script;

/// The control step, run by every replica every quarter lease: it renews this replica's
/// membership (`ZADD members <now + lease> me`), forgets members whose lease lapsed, gives up
/// the shards this replica hands over, takes the shards it wants that have no live owner, and
/// returns the live members and every shard's owner.
///
/// KEYS: members, owners. ARGV: me, lease ms, shards released (comma list), shards wanted
/// (comma list), `leave` ("1": remove me from the members, for a drain).
pub(crate) static CONTROL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[1]
if ARGV[5] == '1' then
  redis.call('ZREM', KEYS[1], me)
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), me)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local alive = {}
for _, m in ipairs(members) do alive[m] = true end
local flat = redis.call('HGETALL', KEYS[2])
local owner = {}
for i = 1, #flat, 2 do owner[flat[i]] = flat[i + 1] end
for s in string.gmatch(ARGV[3], '[^,]+') do
  if owner[s] == me then
    redis.call('HDEL', KEYS[2], s)
    owner[s] = nil
  end
end
local taken = {}
for s in string.gmatch(ARGV[4], '[^,]+') do
  if owner[s] == nil or not alive[owner[s]] then
    owner[s] = me
    table.insert(taken, s)
    table.insert(taken, me)
  end
end
if #taken > 0 then redis.call('HSET', KEYS[2], unpack(taken)) end
local out = {}
for s, o in pairs(owner) do
  table.insert(out, s)
  table.insert(out, o)
end
return {members, out}
",
    )
});

/// Reserves typing calls from a budget's shared window: gives back what this replica did not
/// spend of its previous grant, drops seconds older than the window, and grants up to the
/// calls asked for, within what the window has left under its cap. Also records this
/// replica's session count and cap, and returns the total of sessions over live replicas (their
/// share of the slots). The cap in force is the smallest any live replica reported: each reads
/// the tool's traffic from its own answers, and the window must leave room for the most
/// cautious (first indicators on a replica whose cap is lower than what the others filled the
/// window to would otherwise find no room).
///
/// First indicators are granted from the whole share (as one process lets them use the whole
/// window, whatever the headroom rule leaves the others), unless a replica's budget is paused
/// (a cap of 0); other calls only up to the cap less a
/// reserve and less the first indicators granted within the window (as one process keeps room
/// for as many newcomers as came in the last window), so that a newcomer on any replica finds
/// room even when slot holders spend the rest.
///
/// With the head of this replica's slot order (when the budget is short enough for the
/// replicas to exchange them), records it and returns the other live replicas' heads.
///
/// KEYS: window (hash second -> calls), load (hash replica -> "sessions:expiry ms:cap"), firsts
/// (hash second -> first indicators granted), order (hash replica -> "expiry ms|head").
/// ARGV: window seconds, cap per window, calls wanted, calls given back, the second they were
/// granted in, me, my sessions, load ttl ms, first indicators wanted, the reserve, my head (or
/// empty), the share per window (`budget.typing_share` of the limit).
/// Returns {granted, second, total sessions, calls granted in the window, first indicators
/// granted, first indicators granted in the window, {id, head, ...} of the others, the cap in
/// force}.
pub(crate) static BUDGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1])
local nowms = now * 1000 + math.floor(tonumber(t[2]) / 1000)
local win = tonumber(ARGV[1])
local back = tonumber(ARGV[4])
if back > 0 then
  local had = tonumber(redis.call('HGET', KEYS[1], ARGV[5]) or '0')
  if had > 0 then redis.call('HSET', KEYS[1], ARGV[5], math.max(0, had - back)) end
end
local function sum_recent(key)
  local flat = redis.call('HGETALL', key)
  local total = 0
  local old = {}
  for i = 1, #flat, 2 do
    if tonumber(flat[i]) <= now - win then
      table.insert(old, flat[i])
    else
      total = total + tonumber(flat[i + 1])
    end
  end
  if #old > 0 then redis.call('HDEL', key, unpack(old)) end
  return total
end
redis.call('HSET', KEYS[2], ARGV[6], ARGV[7] .. ':' .. (nowms + tonumber(ARGV[8])) .. ':' .. ARGV[2])
local loads = redis.call('HGETALL', KEYS[2])
local total = 0
local cap = tonumber(ARGV[2])
local gone = {}
for i = 1, #loads, 2 do
  local n, exp, c = string.match(loads[i + 1], '^(%d+):(%d+):?(%d*)$')
  if n == nil or tonumber(exp) < nowms then
    table.insert(gone, loads[i])
  else
    total = total + tonumber(n)
    if c ~= '' then cap = math.min(cap, tonumber(c)) end
  end
end
if #gone > 0 then redis.call('HDEL', KEYS[2], unpack(gone)) end
local used = sum_recent(KEYS[1])
local recent_firsts = sum_recent(KEYS[3])
local firsts = 0
if cap > 0 then firsts = math.max(0, math.min(tonumber(ARGV[9]), tonumber(ARGV[12]) - used)) end
local room = cap - tonumber(ARGV[10]) - recent_firsts - used - firsts
local grant = math.max(0, math.min(tonumber(ARGV[3]), room))
if grant + firsts > 0 then
  redis.call('HINCRBY', KEYS[1], now, grant + firsts)
  redis.call('PEXPIRE', KEYS[1], win * 1000 + 5000)
end
if firsts > 0 then
  redis.call('HINCRBY', KEYS[3], now, firsts)
  redis.call('PEXPIRE', KEYS[3], win * 1000 + 5000)
end
local heads = {}
if ARGV[11] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[6], (nowms + tonumber(ARGV[8])) .. '|' .. ARGV[11])
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[8]) * 2)
  local flat = redis.call('HGETALL', KEYS[4])
  local stale = {}
  for i = 1, #flat, 2 do
    local exp, head = string.match(flat[i + 1], '^(%d+)|(.*)$')
    if exp == nil or tonumber(exp) < nowms then
      table.insert(stale, flat[i])
    elseif flat[i] ~= ARGV[6] then
      table.insert(heads, flat[i])
      table.insert(heads, head)
    end
  end
  if #stale > 0 then redis.call('HDEL', KEYS[4], unpack(stale)) end
end
return {grant, now, total, used + grant + firsts, firsts, recent_firsts + firsts, heads, cap}
",
    )
});
