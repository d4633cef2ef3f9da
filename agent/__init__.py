"""raven-agent: the node agent (process entry, watch loop, role switching, member data path)."""
