"""README.md is a short landing page whose config table and links match the repository.

Reads text files only: no JAX, no project imports.
"""

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
CONFIGS = os.path.join(ROOT, 'configs')
MAX_README_LINES = 200
NONE = {'—', '-', ''}

_FENCE = re.compile(r'^(```|~~~).*?^\1[^\n]*$', re.M | re.S)
_LINK = re.compile(r'(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
_CODE_CELL = re.compile(r'^`([^`]+)`$')


def _read(path):
  with open(path, encoding='utf-8') as f:
    return f.read()


def _without_code_blocks(text):
  return _FENCE.sub('', text)


def _table_rows(lines):
  """The cells of each row of a markdown table given as its lines (separator row dropped)."""
  rows = []
  for line in lines:
    cells = [c.strip() for c in line.strip().strip('|').split('|')]
    if all(re.fullmatch(r':?-{3,}:?', c) for c in cells):
      continue
    rows.append(cells)
  return rows


def _tables(text):
  """Every markdown table in `text` (outside code blocks), as lists of rows of cells."""
  tables, block = [], []
  for line in _without_code_blocks(text).splitlines() + ['']:
    if line.lstrip().startswith('|'):
      block.append(line)
    elif block:
      tables.append(_table_rows(block))
      block = []
  return tables


def _config_table(text):
  """The README's tasks x optimizers table: the one whose header starts with `task` and whose
  cells name `.py` files."""
  for table in _tables(text):
    header = table[0]
    if header and header[0].lower() == 'task' and any(
        cell.endswith('.py`') for row in table[1:] for cell in row[1:]):
      return table
  raise AssertionError('README.md has no tasks x optimizers table (header "| task | <optimizer> | ...")')


def _config_files():
  """configs/<task>_<optimizer>.py: not private (`_x.py`), not base.py / __init__.py, and a
  config (it defines get_config), not a helper module such as optimizer_defaults.py."""
  names = set()
  for path in glob.glob(os.path.join(CONFIGS, '*.py')):
    name = os.path.basename(path)
    if name.startswith('_') or name in ('base.py', '__init__.py'):
      continue
    if re.search(r'^def get_config\(', _read(path), re.M):
      names.add(name)
  return names


def test_readme_is_short_and_starts_with_its_title():
  text = _read(README)
  assert text.startswith('# '), 'README.md must start with its title, "# ..."'
  lines = text.splitlines()
  assert len(lines) <= MAX_README_LINES, f'README.md has {len(lines)} lines, at most {MAX_README_LINES}'


def test_config_table_lists_exactly_the_config_files():
  table = _config_table(_read(README))
  optimizers = table[0][1:]
  named, problems = set(), []
  for row in table[1:]:
    task, cells = row[0].strip('`'), row[1:]
    assert len(cells) == len(optimizers), f'row {task!r} has {len(cells)} cells for {len(optimizers)} optimizers'
    for optimizer, cell in zip(optimizers, cells):
      if cell in NONE:
        continue
      match = _CODE_CELL.match(cell)
      if not match:
        problems.append(f'{task} x {optimizer}: cell {cell!r} is neither `file.py` nor —')
        continue
      name = match.group(1)
      if name != f'{task}_{optimizer}.py':
        problems.append(f'{task} x {optimizer}: names {name}, expected {task}_{optimizer}.py')
      if not os.path.isfile(os.path.join(CONFIGS, name)):
        problems.append(f'{task} x {optimizer}: configs/{name} does not exist')
      named.add(name)
  missing = sorted(_config_files() - named)
  if missing:
    problems.append(f'configs missing from the table: {", ".join(missing)}')
  assert not problems, '\n'.join(problems)


def _slug(heading):
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def _anchors(path):
  anchors, seen = set(), {}
  for line in _without_code_blocks(_read(path)).splitlines():
    match = re.match(r'^#{1,6}\s+(.*?)\s*#*\s*$', line)
    if match:
      slug = _slug(match.group(1))
      count = seen.get(slug, 0)
      seen[slug] = count + 1
      anchors.add(slug if count == 0 else f'{slug}-{count}')
  return anchors


def _markdown_files():
  return [README] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))


def test_docs_exist():
  assert len(_markdown_files()) > 1, 'docs/*.md is empty'


def test_every_relative_link_points_to_an_existing_file():
  broken = []
  for path in _markdown_files():
    for target in _LINK.findall(_without_code_blocks(_read(path))):
      if re.match(r'^[a-z][a-z0-9+.-]*:', target, re.I):  # http:, https:, mailto:
        continue
      file_part, _, anchor = target.partition('#')
      resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
      where = f'{os.path.relpath(path, ROOT)}: {target}'
      if not os.path.exists(resolved):
        broken.append(f'{where} (no such file)')
      elif anchor and resolved.endswith('.md') and anchor not in _anchors(resolved):
        broken.append(f'{where} (no heading #{anchor})')
  assert not broken, 'broken links:\n' + '\n'.join(broken)
