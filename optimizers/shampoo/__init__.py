"""Shampoo (Anil et al., 2020) as an optax transformation: `scale_by_shampoo`, `shampoo`.

One job per module: `roots` (inverse p-th roots of matrix stacks), `blocking` (static
layouts: merged dims, blocks, buckets), `preconditioning` (statistics, roots applied to
blocks), `grafting` (graft directions and norms), `transform` (hyperparameters, state and
the transformation tying them together), `refresh` (roots computed outside the step).
"""

from optimizers.shampoo.refresh import AsyncRoots as AsyncRoots
from optimizers.shampoo.blocking import preconditioner_kind as preconditioner_kind
from optimizers.shampoo.blocking import stack_sizes as stack_sizes
from optimizers.shampoo.roots import inverse_pth_root as inverse_pth_root
from optimizers.shampoo.roots import ROOT_METHODS as ROOT_METHODS
from optimizers.shampoo.roots import warm_inverse_pth_root as warm_inverse_pth_root
from optimizers.shampoo.transform import ASYNC_REFRESHES as ASYNC_REFRESHES
from optimizers.shampoo.transform import FIELDS as FIELDS
from optimizers.shampoo.transform import find_state as find_state
from optimizers.shampoo.transform import health as health
from optimizers.shampoo.transform import is_stack as is_stack
from optimizers.shampoo.transform import metrics as metrics
from optimizers.shampoo.transform import scale_by_shampoo as scale_by_shampoo
from optimizers.shampoo.transform import shampoo as shampoo
from optimizers.shampoo.transform import ShampooState as ShampooState
