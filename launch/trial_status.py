"""A trial's run status, as its `main.py` run left it in the trial's workdir.

Both the sweep (to index trials and skip finished ones) and the backends (to tell
how a trial they ran ended) read it; it depends on neither.
"""

import json
import os

SUMMARY_FILE = 'summary.json'  # what main.py writes when a run ends
FINISHED = ('completed', 'reached_target', 'diverged')


def summary(workdir: str) -> dict:
  """The run's summary.json ({} until the run ends)."""
  try:
    with open(os.path.join(workdir, SUMMARY_FILE)) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return {}


def status(workdir: str) -> str:
  """The run's status from its summary.json, else 'pending'."""
  return summary(workdir).get('status') or 'pending'
