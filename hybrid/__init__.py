"""hybrid: parallel autoresearch with Bayesian optimization.

A campaign keeps every worker busy with experiments chosen by proposers (classical and LLM),
ranked by a surrogate, records every result durably and mirrors it to MLflow.
"""

__version__ = "0.1.0"
