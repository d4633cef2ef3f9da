"""``python -m raven.lab.standins kube-proxy|coredns ...``: see :mod:`.process`."""

from raven.lab.standins.process import main

main()
