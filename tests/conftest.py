"""Test-wide settings."""

import os

# The command line keeps XLA's compiled code in a persistent cache; tests that call it
# in-process must not write to the user's home or change the process-wide JAX config.
os.environ.setdefault("JAXSR_CACHE_DIR", "")

# Hypothesis: CI runs a fixed seed and few examples (every property suite together stays
# under a minute on a 2-core CPU); HYPOTHESIS_PROFILE=long runs 100 times more, from random
# seeds, to hunt for new failures. Suites that are slow per example take a fraction of
# ``settings.default.max_examples``, so they scale with the profile too.
from hypothesis import HealthCheck, settings  # noqa: E402

CI_EXAMPLES = 100
settings.register_profile(
    "ci", max_examples=CI_EXAMPLES, derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "long", max_examples=100 * CI_EXAMPLES, derandomize=False, deadline=None,
    print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
