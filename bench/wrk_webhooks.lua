-- wrk script for bench/intake.py: one connection per wrk thread, every request a distinct
-- RevenueCat webhook (unique event.id), latencies measured here with CLOCK_MONOTONIC.
--
-- wrk args after "--":  mode duration_s rate_per_thread tag template_file auth out_file
--   mode "max":   closed loop, each connection sends its next request as soon as the previous
--                 answer arrives.
--   mode "paced": open loop per connection (like wrk2): request k of a connection is due at
--                 t0 + k / rate_per_thread; delay() waits for that instant and the latency is
--                 counted from when it was due (or from when it was sent, if earlier), so a
--                 slow answer that makes the next request late is charged to the server.
-- Past its deadline a thread sends only GET /healthz until wrk's own clock ends the run, so
-- no webhook is ever left in flight: every webhook sent is answered and counted (the bench
-- checks rows == 200 answers). It does not simply stop: with gunicorn's sync workers wrk
-- reconnects after every answer, and a stopped thread's fresh idle connection would hold a
-- sync worker (which waits for its request) while other threads' last webhooks queue behind it.
-- wrk's own latency statistics are not used: wrk 4.x "corrects" them for coordinated omission
-- with synthetic samples; the raw per-request latencies are written to out_file instead.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
unsigned long pthread_self(void);
]]
local ts = ffi.new("bench_timespec")
local C = ffi.C

local function now_us()
   C.clock_gettime(1, ts) -- CLOCK_MONOTONIC, the same clock as Python's time.monotonic()
   return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local counter = 0
local threads = {}

function setup(thread)
   counter = counter + 1
   thread:set("tid", counter)
   table.insert(threads, thread)
end

function init(args)
   mode = args[1]
   duration_us = tonumber(args[2]) * 1000000
   rate = tonumber(args[3])
   tag = args[4]
   local f = assert(io.open(args[5], "rb"))
   local template = f:read("*a")
   f:close()
   auth = args[6]
   out_file = args[7]
   nthreads = tonumber(args[8])
   -- the body template is split on the marker; the event id goes between the pieces
   parts = {}
   for piece in (template .. "@@ID@@"):gmatch("(.-)@@ID@@") do
      table.insert(parts, piece)
   end
   local host = wrk.headers["Host"] or (wrk.host .. ":" .. tostring(wrk.port))
   drain_request = "GET /healthz HTTP/1.1\r\nHost: " .. host .. "\r\n\r\n"
   draining = false
   head = "POST " .. wrk.path .. " HTTP/1.1\r\nHost: " .. host .. "\r\nAuthorization: " .. auth ..
      "\r\nContent-Type: application/json\r\nContent-Length: "
   sent, ok, other, n, lost = 0, 0, 0, 0, 0
   awaiting = false
   -- wrk calls request() once from its main thread to check the script (thread 1 only);
   -- that request is never sent, so it is not counted
   main_thread = tonumber(C.pthread_self())
   lat = {}
   t0, t_first, t_last, deadline, due = nil, nil, nil, nil, nil
   if mode == "paced" then
      interval_us = 1000000 / rate
   else
      delay = nil -- closed loop: no delay() at all
   end
end

local function start_clock(t)
   if t0 == nil then
      -- paced threads start spread over one interval so they do not fire together
      local phase = 0
      if mode == "paced" then phase = interval_us * (tid - 1) / nthreads end
      t0 = t + phase
      deadline = t + duration_us
   end
end

function delay()
   local t = now_us()
   start_clock(t)
   due = t0 + sent * interval_us
   local d = (due - t) / 1000
   if d < 1 then return 0 end
   return math.floor(d)
end

function request()
   if tonumber(C.pthread_self()) == main_thread then
      return head .. "0\r\n\r\n"
   end
   if draining then return drain_request end
   local t = now_us()
   start_clock(t)
   -- a request left unanswered (the server closed the connection without an answer: wrk
   -- reconnects silently) shows up here as a new request while the previous one is pending
   if awaiting then lost = lost + 1 end
   awaiting = true
   sent = sent + 1
   if t_first == nil then t_first = t end
   t_send = t
   local id = tag .. "-" .. tid .. "-" .. sent
   local body = table.concat(parts, id)
   return head .. #body .. "\r\n\r\n" .. body
end

function response(status, headers, body)
   if draining then return end
   local t = now_us()
   local base = t_send
   if due ~= nil and due < base then base = due end
   awaiting = false
   n = n + 1
   lat[n] = t - base
   if status == 200 then ok = ok + 1 else other = other + 1 end
   t_last = t
   local next_due = t
   if mode == "paced" then next_due = t0 + sent * interval_us end
   if t >= deadline or next_due >= deadline then
      draining = true
   end
end

function done(summary, latency, requests)
   -- done() runs in wrk's main Lua state, where init() never ran: ask a thread for the path
   local out = assert(io.open(threads[1]:get("out_file"), "w"))
   local e = summary.errors
   out:write(string.format("E %d %d %d %d %d %d\n", summary.requests, e.connect, e.read, e.write,
      e.status, e.timeout))
   for _, thread in ipairs(threads) do
      local first, last = thread:get("t_first"), thread:get("t_last")
      out:write(string.format("T %d %d %d %d %.1f %.1f %d\n", thread:get("tid"), thread:get("sent"),
         thread:get("ok"), thread:get("other"), first or -1, last or -1, thread:get("lost")))
      local l = thread:get("lat")
      local buf = {}
      for i = 1, #l do buf[i] = string.format("%.1f", l[i]) end
      if #buf > 0 then out:write("L ", table.concat(buf, " "), "\n") end
   end
   out:close()
end
