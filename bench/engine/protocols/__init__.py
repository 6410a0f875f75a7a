"""Round protocols (``bench.api.protocol.Protocol``), registered in ``PROTOCOLS`` next to their classes."""
