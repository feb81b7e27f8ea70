"""Validation runs (installed as ``hadainit.experiments``; the ``hadainit`` console command)."""
