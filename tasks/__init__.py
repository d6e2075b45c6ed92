"""Task registry: name -> Task class, imported on first use (tasks pull heavy deps)."""

import importlib

from errors import ConfigError
from tasks.base import Task

REGISTRY = {
    'lp_regression': 'tasks.lp_regression:LpRegression',
    'transformer': 'tasks.transformer:Translation',
    'bert': 'tasks.bert:Pretraining',
    'dlrm': 'tasks.dlrm:ClickThrough',
    'resnet50': 'tasks.resnet:ImageClassification',
}


def get(name: str) -> type[Task]:
  if name not in REGISTRY:
    raise ConfigError(f'unknown task {name!r}; known: {", ".join(sorted(REGISTRY))}')
  module, cls = REGISTRY[name].split(':')
  return getattr(importlib.import_module(module), cls)
