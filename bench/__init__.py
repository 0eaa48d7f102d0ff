"""Benchmark: an msession node against a local redis-server, same load, same run.

``python -m bench [--seconds N]`` from the repository root. See ``bench/README.md``.

Modules:

- ``workload``  -- the session workload (ids, ~1 KB data, variables, the op mix)
- ``protocols`` -- the two client codecs the load generator speaks (our
  ``protocol.codec`` for msession, hand-written RESP for redis)
- ``loadgen``   -- the load generator worker processes (raw non-blocking sockets, epoll)
- ``servers``   -- starting, watching and stopping the two servers
- ``report``    -- percentiles, the table, JSON, machine facts
- ``cli``       -- the command line and the phases
- ``pyspy_report`` -- ``python -m bench.pyspy_report FILE``: sums up a py-spy raw profile
"""
