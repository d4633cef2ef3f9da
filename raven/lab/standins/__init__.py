"""Stand-ins for the node components that read pool-scope data: kube-proxy and CoreDNS.

Neither can run here (no kube-proxy or CoreDNS binary, no container runtime), and of what they
do only their reads of the API server matter to Raven: the same Services and EndpointSlices
read by every component of every node are what a pool's uplink carries again and again. Each
stand-in is one lab process per node and component (``python -m raven.lab.standins
kube-proxy|coredns --node N --kubeconfig K``) that lists and watches what the real component
does, the way client-go's informers do, through the node's cache-proxy, keeps its own
in-memory copy, and records when every event arrived (:mod:`.mirror`, :mod:`.reflector`,
:mod:`.components`; the lab side in :mod:`.control`).
"""
