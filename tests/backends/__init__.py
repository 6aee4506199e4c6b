"""Backend tests: a shared conformance suite (suite.py) and one subclass per backend."""
