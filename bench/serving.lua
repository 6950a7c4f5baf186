-- wrk script for bench/serving.sh: POSTs the .npy file named by BENCH_NPY to the URL given
-- on the wrk command line with Content-Type application/x-npy, and prints one machine-
-- readable summary line at the end ("BENCH key=value ..."; latencies in microseconds).
-- With BENCH_CODES=1 it also counts responses by HTTP status across all threads (a Lua call
-- per response, so only for the classification pass, not for the timed levels).
-- With BENCH_GET=1 it sends plain GETs instead (the HTTP floor, e.g. on /healthz).
if os.getenv("BENCH_GET") ~= "1" then
    local path = assert(os.getenv("BENCH_NPY"), "BENCH_NPY not set")
    local f = assert(io.open(path, "rb"))
    wrk.method = "POST"
    wrk.body = f:read("*a")
    f:close()
    wrk.headers["Content-Type"] = "application/x-npy"
end

local count_codes = os.getenv("BENCH_CODES") == "1"
local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

if count_codes then
    codes = {}
    function response(status, headers, body)
        codes[status] = (codes[status] or 0) + 1
    end
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d mean_us=%.1f max_us=%d " ..
        "non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
        latency.mean, latency.max, e.status, e.connect, e.read, e.write, e.timeout))
    if count_codes then
        local total = {}
        for _, t in ipairs(threads) do
            for status, n in pairs(t:get("codes") or {}) do
                total[status] = (total[status] or 0) + n
            end
        end
        local parts = {}
        for status, n in pairs(total) do
            table.insert(parts, string.format("%s:%d", tostring(status), n))
        end
        table.sort(parts)
        io.write("BENCH_CODES " .. table.concat(parts, " ") .. "\n")
    end
end
