"""Tests of the classical proposers: a shared conformance suite plus per-proposer behaviour."""
