"""Tests of the GP surrogate, the feasibility models and the GP ranker."""
