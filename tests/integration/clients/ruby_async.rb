# ruby-pg's asynchronous connect under the shim.
#
# usage: ruby_async.rb N SLEEP_S
# First N connects started at once with PG::Connection.connect_start and
# driven from one thread with IO.select over each connection's socket (asked
# anew at every step), each then running SELECT pg_sleep(SLEEP_S); every
# ruby-pg call is timed. Then N threads connecting with PG.connect, whose
# own loop (connect_poll over socket_io) carries the connect.
# Prints {"ok": N, "errors": [...], "connect_call_ms": X, "connect_slept_ms":
# S, "call_ms": Y, "threads_ok": N}: the longest connect call (connect_start,
# connect_poll, socket), the longest of those in which the thread slept (a
# voluntary context switch), and the longest call of any kind (finish too).
require "pg"
require "json"

n, sleep_s = ARGV[0].to_i, ARGV[1].to_f
# ruby-pg builds its own conninfo from defaults: name the server explicitly
CONNINFO = %w[PGHOST PGPORT PGUSER PGDATABASE].zip(%w[host port user dbname])
  .select { |env, _| ENV[env] }.map { |env, key| "#{key}=#{ENV[env]}" }.join(" ")
$max_ms = 0.0
$connect_ms = 0.0
$connect_slept_ms = 0.0
def sleeps
  File.read("/proc/thread-self/status")[/^voluntary_ctxt_switches:\s+(\d+)/, 1].to_i
end

def timed(connect = false)
  s0 = sleeps if connect
  t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  r = yield
  ms = (Process.clock_gettime(Process::CLOCK_MONOTONIC) - t) * 1000
  $max_ms = ms if ms > $max_ms
  if connect
    $connect_ms = ms if ms > $connect_ms
    $connect_slept_ms = ms if ms > $connect_slept_ms && sleeps > s0
  end
  r
end

ok, errors = 0, []
conns = (1..n).map { { c: timed(true) { PG::Connection.connect_start(CONNINFO) }, st: PG::PGRES_POLLING_WRITING, phase: :connect } }
conns.each { |x| errors << "status bad at start: #{x[:c].error_message}" if x[:c].status == PG::CONNECTION_BAD }
deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 90
until conns.all? { |x| x[:phase] == :done } || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
  live = conns.reject { |x| x[:phase] == :done }
  ios = live.map { |x| [IO.for_fd(timed(true) { x[:c].socket }, autoclose: false), x] }
  rd = ios.select { |io, x| x[:phase] == :query || x[:st] == PG::PGRES_POLLING_READING }.map(&:first)
  wr = ios.select { |io, x| x[:phase] == :connect && x[:st] == PG::PGRES_POLLING_WRITING }.map(&:first)
  ready = IO.select(rd, wr, nil, 0.1)
  ready = ready ? (ready[0] + ready[1]) : []
  ios.each do |io, x|
    next unless ready.include?(io)
    c = x[:c]
    if x[:phase] == :connect
      x[:st] = timed(true) { c.connect_poll }
      if x[:st] == PG::PGRES_POLLING_FAILED
        errors << c.error_message.strip
        c.finish
        x[:phase] = :done
      elsif x[:st] == PG::PGRES_POLLING_OK
        timed { c.send_query("SELECT pg_sleep(#{sleep_s})") }
        x[:phase] = :query
      end
    else
      timed { c.consume_input }
      until timed { c.is_busy }
        r = timed { c.get_result }
        if r.nil?
          timed { c.finish }
          ok += 1
          x[:phase] = :done
          break
        end
        errors << r.error_message unless r.result_status == PG::PGRES_TUPLES_OK
      end
    end
  end
end
errors << "the loop did not finish" unless conns.all? { |x| x[:phase] == :done }

threads_ok = 0
m = Mutex.new
(1..n).map do
  Thread.new do
    c = PG.connect(CONNINFO)
    c.exec("SELECT pg_sleep(#{sleep_s})")
    c.close
    m.synchronize { threads_ok += 1 }
  rescue => e
    m.synchronize { errors << "thread: #{e.message.strip}" }
  end
end.each(&:join)
puts JSON.generate({ ok: ok, errors: errors.first(5), connect_call_ms: $connect_ms.round(2),
                     connect_slept_ms: $connect_slept_ms.round(2), call_ms: $max_ms.round(2), threads_ok: threads_ok })
