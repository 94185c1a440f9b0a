"""Models built here rather than loaded: tiny random models of each family (tests) and the seeing default (unime-smol)."""
