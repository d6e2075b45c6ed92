"""Compares finished runs and sweeps (tables, curves, performance profile), reading files only."""
