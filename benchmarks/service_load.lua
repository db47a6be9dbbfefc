-- wrk script of `make bench-service`: POST /v1/search with a distinct query each time (as benchmarks/service_load.py
-- makes them), statuses counted, and the figures printed as one JSON line at the end.
local words = {"license", "redistribution", "compression", "stream", "header", "user", "group", "dependency",
               "resolver", "format", "checksum", "warranty", "patent", "block", "index", "version", "encoding",
               "archive", "file", "key"}
local key = os.getenv("BENCH_API_KEY")
local counter = 0
local threads = {}
statuses = {}

function setup(thread)
  thread:set("offset", #threads * 1000000)
  table.insert(threads, thread)
end

function request()
  local i = offset + counter
  counter = counter + 1
  local query = words[i % 20 + 1] .. " " .. words[(i * 7 + 3) % 20 + 1] .. " " .. words[(i * 13 + 5) % 20 + 1] ..
                " " .. i
  return wrk.format("POST", "/v1/search", {["Content-Type"] = "application/json",
                    ["Authorization"] = "Bearer " .. key}, '{"query": "' .. query .. '", "top_k": 5}')
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[tostring(status)] = (counts[tostring(status)] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%s": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "statuses": {%s}, ' ..
           '"socket_errors": %d}\n', summary.requests, summary.duration, latency:percentile(50),
           latency:percentile(99), table.concat(parts, ", "), e.connect + e.read + e.write + e.timeout))
end
