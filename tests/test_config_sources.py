"""Every value a config sets for the `paper` size names its source (or says it is this project's choice).

The rule, applied to each configs/*.py as written (parsed with `ast`, comments read with `tokenize`).
A paper value is
  * the paper side of a size conditional: `b` in `a if tiny else b`, where the test is `tiny` (a name
    bound to `size == 'tiny'`) or the comparison itself; `size == 'paper'` and `!=` flip the sides;
  * every keyword argument and assigned value of a statement that runs only at size `paper`: the body
    of `if <paper test>:`, the `else:` of `if <tiny test>:`, and what follows an `if <tiny test>:`
    whose body ends in `return`;
  * the `'paper'` entry of a dict keyed by sizes;
  * every keyword argument or parameter default named `paper_*` and every module constant `PAPER_*`.
A paper value that is a bare module constant is checked where the constant is assigned; another bare
name (a function parameter) is checked where its value is written. Each value needs a comment on one of
its lines, or in the comment lines right above its first line, that names a source (`<author> et al.`,
`<name> paper`, a README, MLPerf, a reference, the data set: WMT, Criteo, ILSVRC, UCI) or says
`our choice: <why>`. A comment naming a file path that is not in this repository names no source.
"""

import ast
import io
import pathlib
import re
import tokenize

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG_FILES = sorted((ROOT / 'configs').glob('*.py'))
SIZES = ('tiny', 'paper')
SOURCE = re.compile(r"\bet al\b|\b[A-Z][\w'-]* paper\b|README|MLPerf|\breference\b|\bWMT|Criteo|ILSVRC|\bUCI\b"
                    r"|\bour choice: \S")
FILE_PATH = re.compile(r'(?<![\w/.-])/?[\w.-]+(?:/[\w.-]+)*\.(?:py|md|json|txt|yaml)\b')


def comments_by_line(source: str) -> tuple[dict[int, str], set[int]]:
  """({line: its comment}, lines holding nothing but a comment)."""
  comments, alone = {}, set()
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      comments[token.start[0]] = token.string
      if not token.line[:token.start[1]].strip():
        alone.add(token.start[0])
  return comments, alone


def outside_paths(comment: str) -> list[str]:
  """File paths a comment names that this repository does not hold (from its root or configs/)."""
  def held(path):
    return not path.startswith('/') and ((ROOT / path).exists() or (ROOT / 'configs' / path).exists())
  return [path for path in FILE_PATH.findall(comment) if not held(path)]


def is_size_compare(node) -> str | None:
  """'tiny' or 'paper' for `size == '<size>'` (`!=` gives the other size), else None."""
  if (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.Eq, ast.NotEq))
      and isinstance(node.comparators[0], ast.Constant) and node.comparators[0].value in SIZES):
    size = node.comparators[0].value
    return size if isinstance(node.ops[0], ast.Eq) else SIZES[1 - SIZES.index(size)]
  return None


class Checker:
  """Finds one file's paper values and the ones without a source comment."""

  def __init__(self, source: str, name: str):
    self.source, self.name = source, name
    self.tree = ast.parse(source)
    self.comments, self.alone = comments_by_line(source)
    self.constants = {target.id: node for node in self.tree.body if isinstance(node, ast.Assign)
                      for target in node.targets if isinstance(target, ast.Name)}
    self.size_names = {target.id: is_size_compare(node.value) for node in ast.walk(self.tree)
                       if isinstance(node, ast.Assign) and is_size_compare(node.value)
                       for target in node.targets if isinstance(target, ast.Name)}
    self.checked: set[tuple[int, int]] = set()
    self.failures: list[str] = []

  def size_test(self, test) -> str | None:
    """The size under which `test` is true ('tiny' | 'paper'), or None when it is no size test."""
    if isinstance(test, ast.Name):
      return self.size_names.get(test.id)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
      size = self.size_test(test.operand)
      return size and SIZES[1 - SIZES.index(size)]
    return is_size_compare(test)

  def run(self) -> list[str]:
    for node in self.tree.body:
      if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.startswith('PAPER_')
                                              for t in node.targets):
        self.require(node.value)
    for node in ast.walk(self.tree):
      if isinstance(node, ast.IfExp) and self.size_test(node.test):
        self.value(node.orelse if self.size_test(node.test) == 'tiny' else node.body, node)
      elif isinstance(node, ast.Dict) and node.keys and all(
          isinstance(k, ast.Constant) and k.value in SIZES for k in node.keys):
        self.value(node.values[[k.value for k in node.keys].index('paper')])
      elif isinstance(node, ast.keyword) and node.arg and node.arg.startswith('paper_'):
        self.value(node.value)
      elif isinstance(node, (ast.FunctionDef, ast.Lambda)):
        positional = node.args.posonlyargs + node.args.args
        for arg, default in zip(positional[len(positional) - len(node.args.defaults):], node.args.defaults):
          if arg.arg.startswith('paper_'):
            self.value(default)
      if isinstance(node, (ast.FunctionDef, ast.Module, ast.If, ast.For, ast.With)):
        self.statements(node.body)
        if isinstance(node, (ast.If, ast.For)):
          self.statements(node.orelse)
    return self.failures

  def statements(self, body) -> None:
    """Finds the statements of `body` that run only at size paper."""
    for i, statement in enumerate(body):
      if not isinstance(statement, ast.If) or not self.size_test(statement.test):
        continue
      if self.size_test(statement.test) == 'paper':
        self.paper_block(statement.body)
      else:
        self.paper_block(statement.orelse)
        if statement.body and isinstance(statement.body[-1], ast.Return):
          self.paper_block(body[i + 1:])

  def paper_block(self, body) -> None:
    for statement in body:
      for node in ast.walk(statement):
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value is not None:
          self.value(node.value)
        elif isinstance(node, ast.Expr):
          self.value(node.value)

  def value(self, node, conditional=None) -> None:
    """Checks a paper value: a call's keyword values, a module constant's assignment, else the value
    (with the lines of the size `conditional` it is the paper side of)."""
    if isinstance(node, ast.Call):
      for keyword in node.keywords:
        if keyword.arg:
          self.value(keyword.value)
    elif isinstance(node, ast.IfExp) and self.size_test(node.test):
      pass  # walked on its own
    elif isinstance(node, ast.Name):
      if node.id in self.constants:
        self.require(self.constants[node.id].value)
    else:
      self.require(node, conditional or node)

  def require(self, node, span=None) -> None:
    """Records a failure unless a comment on `span`'s lines, or right above them, names a source."""
    span = span or node
    if (node.lineno, node.col_offset) in self.checked:
      return
    self.checked.add((node.lineno, node.col_offset))
    lines = list(range(span.lineno, span.end_lineno + 1))
    above = span.lineno - 1
    while above in self.alone:
      lines.append(above)
      above -= 1
    comments = [self.comments[line] for line in lines if line in self.comments]
    text = ast.get_source_segment(self.source, node)
    paths = [path for comment in comments for path in outside_paths(comment)]
    if paths:
      self.failures.append(f'{self.name}:{node.lineno}: `{text}` cites {", ".join(paths)}, not a file of '
                           'this repository')
    elif not any(SOURCE.search(comment) for comment in comments):
      self.failures.append(f'{self.name}:{node.lineno}: paper value `{text}` has no source comment (a paper, '
                           'README, MLPerf, a reference, or "our choice: <why>")')


def unsourced(source: str, name: str = 'config.py') -> list[str]:
  return Checker(source, name).run()


def test_every_paper_value_names_its_source():
  failures = [failure for path in CONFIG_FILES
              for failure in unsourced(path.read_text(), str(path.relative_to(ROOT)))]
  assert not failures, 'paper values without a source:\n' + '\n'.join(failures)


@pytest.mark.parametrize('source,line', [
    ("tiny = size == 'tiny'\nx = 1 if tiny else 2\n", 2),
    ("x = 2 if size == 'paper' else 1\n", 1),
    ("x = 1 if size != 'paper' else 2\n", 1),
    ("def f(size):\n  if size == 'tiny':\n    return 1\n  c = g(lr=3.0)\n  return c\n", 4),
    ("def f(size):\n  if size == 'tiny':\n    c = 1\n  else:\n    c = g(\n        lr=3.0)\n  return c\n", 6),
    ("x = {'tiny': 1, 'paper': 2}[size]\n", 1),
    ("PAPER_STEPS = 2512\n", 1),
    ("f(size, paper_steps=2512)\n", 1),
    ("STEPS = 7\nx = 1 if size == 'tiny' else STEPS\n", 1),
])
def test_each_form_of_paper_value_is_found(source, line):
  assert [failure.split(':')[1] for failure in unsourced(source)] == [str(line)]


@pytest.mark.parametrize('comment', ['# Vaswani et al. 2017, Sec. 5.3', '# SOAP paper', '# MLPerf',
                                     '# reference README', '# our choice: memory'])
def test_a_source_on_the_line_or_right_above_counts(comment):
  assert not unsourced(f"x = 1 if size == 'tiny' else 2  {comment}\n")
  assert not unsourced(f"{comment}\n# more\nx = (1 if size == 'tiny'\n     else 2)\n")
  assert unsourced(f"{comment}\ny = 0\nx = 1 if size == 'tiny' else 2\n")


@pytest.mark.parametrize('comment', ['# placeholder', '# our choice:', '# paper', '# see PAPERS.md, MLPerf',
                                     '# MLPerf, /tmp/notes.md'])
def test_a_comment_without_a_source_or_citing_a_file_elsewhere_does_not_count(comment):
  assert unsourced(f"x = 1 if size == 'tiny' else 2  {comment}\n")
