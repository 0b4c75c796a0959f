"""Throughput benchmarks for moqt-asgi over real UDP sockets on 127.0.0.1.

Run them all with ``python -m benchmarks`` (``--help`` for options).
"""
