"""bench/chaos.py --quick: real main.py processes killed, torn, emptied, signalled, doubled and
starved of disk, each ending as docs/reliability.md says (bitwise equal to an uninterrupted run)."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = ('kill -9', 'torn metrics line', 'emptied newest checkpoint', 'SIGTERM while compiling',
             'two runs, one workdir', 'full disk')


def test_every_fault_of_the_quick_chaos_run_ends_as_documented(tmp_path):
  result = subprocess.run([sys.executable, 'bench/chaos.py', '--quick', f'--root={tmp_path}'],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
  rows = {match[0]: (int(match[1]), int(match[2]))
          for match in re.findall(r'^\| ([^|]+?) \| (\d+) \| (\d+) \|', result.stdout, re.MULTILINE)}
  assert sorted(rows) == sorted(SCENARIOS), result.stdout + result.stderr[-3000:]
  failed = {scenario: counts for scenario, counts in rows.items() if counts[0] != counts[1]}
  assert not failed and result.returncode == 0, result.stdout
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
