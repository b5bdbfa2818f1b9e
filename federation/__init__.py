"""What the federation's client and server share, and neither owns.

The wire format (``wire``), the run settings (``settings``) and their typed-field
machinery (``fields``), process supervision (``processes``), Flower's environment
(``flower_env``, ``entry``), certificates (``certs``) and the secure-aggregation
primitives (``secagg``). It never imports ``client``, ``server``, ``strategies`` or the
command layer (``umedpt_fl``), and importing it has no side effects: processes switch
Flower's telemetry off where they start (:mod:`federation.entry`).
"""
