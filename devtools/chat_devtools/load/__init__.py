"""Load generators of the tests and the benchmarks, in one place.

- :mod:`chat_devtools.load.clients`: concurrent ``requests`` clients that record every answer (correctness under
  faults: bursts, a steady create mix, per-tenant message load).
- :mod:`chat_devtools.load.wrk`: closed-loop throughput with wrk (the benchmarks' throughput figures).
- :mod:`chat_devtools.load.paced`: an open-loop asyncio client at a fixed rate (the end-to-end timings).
"""
