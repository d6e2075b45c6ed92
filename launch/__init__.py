"""Sweeps of `main.py` runs: search spaces, trial workdirs, and the local / TPU / Slurm backends."""
