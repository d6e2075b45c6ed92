"""Imports run one way between the project's rooms, and config files stay plain data."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOMS = ('configs', 'data', 'tasks', 'optimizers', 'trainer', 'launch', 'results', 'bench')
# Which rooms each room may import (besides itself and `errors`, which every room may import).
ALLOWED = {
    'configs': set(),
    'data': set(),
    'tasks': {'data'},
    'optimizers': set(),
    'trainer': {'tasks', 'optimizers', 'data'},
    'launch': {'configs', 'results'},
    'results': set(),
    'bench': {'configs', 'tasks', 'optimizers', 'trainer', 'data'},
    'main': {'trainer'},
}


def _python_files(room):
  if room == 'main':
    yield os.path.join(ROOT, 'main.py')
    return
  for folder, _, files in os.walk(os.path.join(ROOT, room)):
    yield from (os.path.join(folder, f) for f in sorted(files) if f.endswith('.py'))


def _module_name(path):
  return os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.').removesuffix('.__init__')


def _project_modules():
  return {_module_name(p) for room in (*ROOMS, 'main') for p in _python_files(room)} | {'errors'}


def _imports(path, modules=frozenset()):
  """(line, imported module) for every import in the file, at any depth (function-level too).

  `from package import name` counts as importing package.name where that is a module of `modules`.
  """
  tree = ast.parse(open(path).read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from ((node.lineno, alias.name) for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      for alias in node.names:
        submodule = f'{node.module}.{alias.name}'
        yield node.lineno, submodule if submodule in modules else node.module


@pytest.mark.parametrize('room', sorted(ALLOWED))
def test_a_room_imports_only_the_rooms_it_may(room):
  forbidden = []
  for path in _python_files(room):
    for line, module in _imports(path):
      top = module.split('.')[0]
      if top in ROOMS and top != room and top not in ALLOWED[room]:
        forbidden.append(f'{os.path.relpath(path, ROOT)}:{line} imports {module}')
  assert not forbidden, '\n'.join(forbidden)


def test_no_module_imports_itself_back_through_others():
  modules = _project_modules()
  graph = {}
  for room in (*ROOMS, 'main'):
    for path in _python_files(room):
      name = _module_name(path)
      graph[name] = {m for _, m in _imports(path, modules) if m in modules and m != name}
  cycles, state = set(), {}

  def visit(node, stack):
    state[node] = 'open'
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 'open':
        cycles.add(' -> '.join(stack[stack.index(nxt):] + [nxt]))
      elif nxt not in state:
        visit(nxt, stack + [nxt])
    state[node] = 'done'

  for start in sorted(graph):
    if start not in state:
      visit(start, [start])
  assert not cycles, '\n'.join(sorted(cycles))


def test_config_files_import_neither_jax_nor_the_code_they_configure():
  configs = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, 'configs'))
                   if f.endswith('.py') and not f.startswith('_') and f not in ('base.py', 'optimizer_defaults.py'))
  script = (
      'import importlib, sys\n'
      f'for name in {configs!r}:\n'
      '  module = importlib.import_module("configs." + name)\n'
      '  module.get_config("tiny"); module.get_config("paper")\n'
      'heavy = sorted(m for m in ("jax", "tensorflow", "optax", "flax", "numpy", "data", "tasks", "optimizers",\n'
      '                           "trainer") if m in sys.modules)\n'
      'print(len(' + repr(configs) + '), heavy)\n')
  result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split()[1:] == ['[]'], result.stdout
