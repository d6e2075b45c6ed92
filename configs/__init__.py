"""Experiment configs: one file per `<task>_<optimizer>`, each `get_config(size)`."""
