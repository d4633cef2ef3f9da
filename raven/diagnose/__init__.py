"""``raven diagnose SRC DST``: the path a packet between two pods should take, every hop of it
checked against what the nodes hold, probes where a probe tells more, and the first hop that is
wrong with its evidence and what to do.

Pure: :mod:`.facts` (what a node's dumps say), :mod:`.path` (the expected path, from the
objects), :mod:`.checks` (facts -> verdicts), :mod:`.outcome` (findings in path order, the
verdict), :mod:`.report` (text and JSON). The edges: :mod:`.probes` (scapy
packets sent and captured on a node), :mod:`.transport` (how a node is reached: ``kubectl
exec`` into its agent container here, its namespace in the lab), :mod:`.run` (reads the
objects, collects, probes, judges).
"""
