"""raven-cache-proxy: a loopback caching proxy that keeps node components working offline."""
