"""The coordinator's read-only live view of a run folder (``umedpt-fl dashboard``).

It reads one file, ``<out>/run-state.json`` (:mod:`dashboard.state`), which the server's
round loop rewrites atomically after every round; never a site's data, never the weights.
It imports neither Flower nor the client or server packages, so it can serve a run folder
on any machine that has the folder. The commands start it: ``umedpt-fl dashboard``, and
``--dashboard HOST:PORT`` of ``server`` and ``simulate`` (:mod:`umedpt_fl.commands.dashboard`).
"""
