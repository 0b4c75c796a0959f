"""Structure-aware fuzzing of the protocol codecs and the session engine.

* :mod:`.wire`: an encoded message as parts (head, length prefix, body), so a
  mutation can lie about a length rather than only flip bytes.
* :mod:`.mutations`: the mutation operators, drawn by Hypothesis or by a
  seeded :class:`random.Random` (the deep run), applied the same way.
* :mod:`.targets`: every message of every version as a *target*: how to encode
  it, and how to decode bytes the way the engine reads them off a stream.
* :mod:`.strategies`: valid message values per target (respecting
  :class:`~moqt_asgi.protocol.limits.Limits`), mutated and arbitrary inputs.
* :mod:`.harness`: the properties (round trip; decoding anything raises only
  our protocol errors and asks for no more than the limits allow).
* :mod:`.corpus`: regression inputs kept under ``corpus/``.
* :mod:`.engine`: raw peers writing fuzzed streams into real server sessions
  over the in-memory transport.

The normal test suite runs these at a modest example count
(``tests/test_fuzz_codecs.py``, ``tests/test_fuzz_engine.py``);
``python -m benchmarks.fuzz`` runs the codec properties for a million inputs
per message family.
"""
