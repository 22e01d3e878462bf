"""Test-wide settings."""

import os

# The command line keeps XLA's compiled code in a persistent cache; tests that call it
# in-process must not write to the user's home or change the process-wide JAX config.
os.environ.setdefault("JAXSR_CACHE_DIR", "")
