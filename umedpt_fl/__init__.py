"""The command layer: every ``umedpt-fl`` command, and what composes both sides.

The only package that imports ``client``, ``server`` and ``strategies`` together: the
command table (``cli``, the process entry), the commands (``commands``), their shared
options and console (``options``, ``console``), the simulation (``simulation``) and the
in-process grid (``inprocess``). Nothing else imports it.
"""
