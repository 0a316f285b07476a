-- GCRA (generic cell rate algorithm) for one route, shared by a fleet of
-- sluice instances: the same arithmetic as governor's, on Redis's clock.
--
-- The only state is the theoretical arrival time (TAT), in microseconds of
-- Redis server time (`TIME`), so the instances' clocks never enter into it
-- and a changed rate (interval) applies to the stored TAT at once.
--
-- A token conforms at `now` if `tat - tolerance <= now`; taking it moves the
-- TAT on by one interval. Taking n at once: the k-th (k = 1..n) conforms if
-- `tat + (k - 1) * interval - tolerance <= now`.
--
-- KEYS[1]  the TAT key
-- ARGV[1]  interval_us: one token per this many microseconds (> 0, may be fractional)
-- ARGV[2]  tolerance_us: (burst - 1) * interval + lateness slack (>= 0)
-- ARGV[3]  want: tokens asked for (integer >= 1)
-- ARGV[4]  horizon_us: tokens that conform within this many microseconds are
--          granted too, reserved for the caller (>= 0; optional, default 0)
--
-- Returns {granted, next_in_us, ready, later_in_us}: tokens granted (0..want);
-- the microseconds, after this grant, until the next single token conforms
-- (0 if one does now); how many of the granted conform now; and when the
-- first of the others (the reserved ones, each one interval after the one
-- before) conforms (0 when none is reserved).
--
-- Arithmetic is in doubles: a TAT of ~1.7e15 us is held to 0.25 us, and is
-- stored with 17 significant digits so it reads back exactly.

-- A token due within this many microseconds of now conforms now: the stored
-- TAT is rounded to 0.25 us, which must not cost a whole token at an exact
-- boundary (e.g. the last token of a burst).
local SLACK_US = 1
-- The key outlives the moment its TAT falls behind the clock (after which it
-- means the same as no key) by this much, so idle routes leave nothing behind.
local EXPIRY_MARGIN_MS = 1000

if #KEYS ~= 1 then
  return redis.error_reply('ERR sluice gcra: expected 1 key (the TAT key), got ' .. #KEYS)
end

-- A finite number in [min, inf); `above` makes min itself out of range.
local function number_arg(index, name, min, above)
  local value = tonumber(ARGV[index])
  if value == nil or value ~= value or value == math.huge
    or value < min or (above and value == min) then
    local bound = above and ('> ' .. min) or ('>= ' .. min)
    return nil, redis.error_reply('ERR sluice gcra: ARGV[' .. index .. '] ' .. name
      .. ' must be a finite number ' .. bound .. ', got ' .. tostring(ARGV[index]))
  end
  return value
end

local interval, err = number_arg(1, 'interval_us', 0, true)
if err then return err end
local tolerance
tolerance, err = number_arg(2, 'tolerance_us', 0, false)
if err then return err end
local want
want, err = number_arg(3, 'want', 1, false)
if err then return err end
if want ~= math.floor(want) then
  return redis.error_reply('ERR sluice gcra: ARGV[3] want must be an integer, got ' .. ARGV[3])
end
local horizon = 0
if ARGV[4] ~= nil then
  horizon, err = number_arg(4, 'horizon_us', 0, false)
  if err then return err end
end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

-- No key, or a TAT in the past: the route is idle, its full burst is free.
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end

-- The k-th token conforms iff (k - 1) * interval <= now + tolerance - tat,
-- and is granted (reserved) iff it conforms by now + horizon.
local room = now + tolerance - tat + SLACK_US
local granted = 0
if room + horizon >= 0 then
  granted = math.min(want, math.floor((room + horizon) / interval) + 1)
end
local ready = 0
if room >= 0 then
  ready = math.min(granted, math.floor(room / interval) + 1)
end
local later_in = 0
if ready < granted then
  later_in = math.max(0, math.ceil(tat + ready * interval - tolerance - now))
end

if granted > 0 then
  tat = tat + granted * interval
  local expire_ms = math.max(1, math.ceil((tat - now) / 1000) + EXPIRY_MARGIN_MS)
  redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', expire_ms)
end

-- When the next single token conforms: tat - tolerance <= then. Rounded up
-- (and without the slack), so a caller that comes back after it finds it.
local next_in = math.max(0, math.ceil(tat - tolerance - now))
return {granted, next_in, ready, later_in}
