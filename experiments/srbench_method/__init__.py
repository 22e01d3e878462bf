"""jaxsr as an SRBench method: copy this folder into an SRBench checkout (see regressor.py)."""
