"""Experiment configs: one file per `<task>_<optimizer>`, each `get_config(size)`.

`ConfigError` lives here, at the leaf of the import graph, so that tasks,
optimizers, data and the trainer can all reject bad settings the same way:
`main.py` turns it into one line on stderr and exit code 2.
"""


class ConfigError(ValueError):
  """A setting the run cannot honour; the message names the field."""
