import scaigrid.runtime  # noqa: F401  (the runtime's warning filters apply before eventlet is imported)
