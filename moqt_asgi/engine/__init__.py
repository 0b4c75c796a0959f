"""The MoQ session engine: one session over one transport connection, both roles, every version.

Public modules: :mod:`.session` (:class:`~.session.Session`), :mod:`.track`
(the two ends of a subscription), :mod:`.announce` (announcements),
:mod:`.mux` (what a session publishes), :mod:`.handshake` (session start per
version). The ``_``-prefixed modules are the engine's insides: the streams
the peer opens (``_publisher``), the streams we open (``_subscriber``),
framed reads (``_reader``) and send scheduling (``_scheduler``).
"""
