"""Applications the tests serve with ``python -m moqt_asgi serve tests.apps.<module>:moq`` from the repository root."""
